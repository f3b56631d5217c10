"""Submit COUNT jobs to arq workers, wait for every result, print the timings.

python -m benchmarks.submit_arq noop|pause COUNT TIMEOUT
"""

import asyncio
import sys
import time

from arq import create_pool

from benchmarks.arq_jobs import REDIS
from benchmarks.measure import Recorder


async def measure(redis, job: str, count: int, timeout: float) -> None:
    recorder = Recorder(job, count)
    deadline = time.monotonic() + timeout
    try:
        jobs = []
        recorder.begin()
        for index in range(count):
            started = time.perf_counter()
            jobs.append(await redis.enqueue_job(job, index))
            recorder.submitted(time.perf_counter() - started)
        for index, queued in enumerate(jobs):
            try:
                # arq polls Redis for a result; its default poll_delay is 0.5 s.
                remaining = max(deadline - time.monotonic(), 0.1)
                recorder.result(index, await queued.result(timeout=remaining, poll_delay=0.02))
            except Exception as exc:
                recorder.error(f"{queued.job_id}: {exc!r}")
    except Exception as exc:
        recorder.error(f"submitting: {exc!r}")
    recorder.end()
    recorder.emit()


async def main(timeout: float, phases: list[str]) -> None:
    redis = await create_pool(REDIS)
    try:
        for phase in phases:
            job, count = phase.split(":")
            await measure(redis, job, int(count), timeout)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]), sys.argv[2:]))
