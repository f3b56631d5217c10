"""Submit COUNT jobs to Prefect task servers, wait for every result, print the timings.

python -m benchmarks.submit_prefect naive|recommended noop|pause COUNT TIMEOUT
"""

import sys
import time

from benchmarks.measure import Recorder
from benchmarks.prefect_jobs import JOBS

BATCH = 50


def result(future, deadline: float) -> float:
    while True:
        try:
            # result() waits for the run's final event, and an event it misses costs the whole
            # timeout; after a timeout it reads the state once more. Short waits, repeated,
            # bound what a missed event costs.
            return future.result(timeout=min(max(deadline - time.monotonic(), 0.1), 5))
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
        except RuntimeError as exc:
            # Just after .delay() a run can exist for a moment without a state (seen on
            # SQLite), and result() then raises "has no state" at once: ask again.
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def collect(futures: list, recorder: Recorder, deadline: float) -> None:
    for index, future in enumerate(futures):
        try:
            recorder.result(index, result(future, deadline))
        except Exception as exc:
            recorder.error(f"{future.task_run_id}: {exc!r}")


def naive(task, count: int, recorder: Recorder) -> list:
    """A plain loop of .delay(): one API client, one parameters file and one POST per call."""
    futures = []
    recorder.begin()
    for index in range(count):
        started = time.perf_counter()
        futures.append(task.delay(index))
        recorder.submitted(time.perf_counter() - started)
    return futures


def recommended(task, count: int, recorder: Recorder) -> list:
    """.map(..., deferred=True) in batches."""
    futures = []
    recorder.begin()
    for first in range(0, count, BATCH):
        batch = list(range(first, min(first + BATCH, count)))
        started = time.perf_counter()
        futures.extend(task.map(batch, deferred=True))
        recorder.submitted(time.perf_counter() - started, len(batch))
    return futures


STYLES = {"naive": naive, "recommended": recommended}

if __name__ == "__main__":
    style, timeout = sys.argv[1], float(sys.argv[2])
    for phase in sys.argv[3:]:
        job, count = phase.split(":")
        recorder = Recorder(job, int(count))
        deadline = time.monotonic() + timeout
        try:
            futures = STYLES[style](JOBS[job], int(count), recorder)
            collect(futures, recorder, deadline)
        except Exception as exc:
            recorder.error(f"submitting: {exc!r}")
        recorder.end()
        recorder.emit()
