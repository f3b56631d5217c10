"""Tasks for the tests that pin Prefect's own behaviour; served by pinned_task_server.py."""

import time

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS


@task
def unserved(n: int) -> int:
    """A task no task server serves: its runs wait until a test ends them."""
    return n


@task(cache_policy=INPUTS)
def double(x: int) -> int:
    return 2 * x


@task(timeout_seconds=1)
def too_slow() -> None:
    time.sleep(3)


@task
def fails() -> None:
    raise ValueError("no luck")


@task(cache_policy=INPUTS)
def square(x: int) -> int:
    return x * x


@task(log_prints=True)
def shout(name: str, seconds: float) -> None:
    print(f"{name} starts")
    time.sleep(seconds)
    print(f"{name} ends")
    get_run_logger().info(f"{name} is done")  # the run's logger is never lost


@task
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"
