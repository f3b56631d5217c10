"""The benchmark's jobs as Prefect tasks. Each returns the moment its body started, so the
submitter can tell how long the job waited in the queue."""

import time

from prefect import task


@task
def noop(index: int) -> float:
    return time.time()


@task
def pause(index: int) -> float:
    started = time.time()
    time.sleep(0.05)  # 50 ms of waiting, like a quick call to another service
    return started


JOBS = {"noop": noop, "pause": pause}
