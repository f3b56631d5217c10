"""Submit COUNT jobs to Celery workers, wait for every result, print the timings.

python -m benchmarks.submit_celery noop|pause COUNT TIMEOUT
"""

import sys
import time

from benchmarks.celery_jobs import JOBS
from benchmarks.measure import Recorder


def measure(job: str, count: int, timeout: float) -> None:
    task = JOBS[job]
    recorder = Recorder(job, count)
    deadline = time.monotonic() + timeout
    results = []
    try:
        recorder.begin()
        for index in range(count):
            started = time.perf_counter()
            results.append(task.delay(index))
            recorder.submitted(time.perf_counter() - started)
        for index, async_result in enumerate(results):
            try:
                remaining = max(deadline - time.monotonic(), 0.1)
                recorder.result(index, async_result.get(timeout=remaining))
            except Exception as exc:
                recorder.error(f"{async_result.id}: {exc!r}")
    except Exception as exc:
        recorder.error(f"submitting: {exc!r}")
    recorder.end()
    recorder.emit()


if __name__ == "__main__":
    for phase in sys.argv[2:]:
        job, count = phase.split(":")
        measure(job, int(count), float(sys.argv[1]))
