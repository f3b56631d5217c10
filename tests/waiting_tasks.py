"""Tasks for the tests of tutorial/waiting.py; served by waiting_task_server.py."""

import time

from prefect import task
from prefect.cache_policies import INPUTS


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
