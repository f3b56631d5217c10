"""Wait for a background task run: always bounded, and right for every final state.

`future.result(timeout=...)` is Prefect's own way to wait. In Prefect 3.9.1 it has two gaps
(tutorial/SURPRISES.md shows both, and the tests that pin them):

- it listens for events named Completed, Failed, Crashed and Cancelled, so it notices a run
  that ends Cached or TimedOut only when its timeout is up (and, with no timeout, never);
- on SQLite a run can read for a moment as having no state, and result() then raises
  RuntimeError("... has no state ...") at once instead of waiting.

These functions read the run's state from the API until it is final, so they return as soon
as the run ends, whatever its final state, and raise TimeoutError when `timeout` runs out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture
from prefect.states import State

POLL_SECONDS = 0.2


def _timed_out(future: PrefectFuture[Any], timeout: float, state: State | None) -> TimeoutError:
    now = state.name if state is not None else "without a state"
    return TimeoutError(f"task run {future.task_run_id} did not end within {timeout} s ({now})")


def final_state(future: PrefectFuture[Any], timeout: float) -> State:
    """The run's final state, read from the API; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_task_run(future.task_run_id).state
            if state is not None and state.is_final():
                return state
            if time.monotonic() >= deadline:
                raise _timed_out(future, timeout, state)
            time.sleep(POLL_SECONDS)


def result_of(future: PrefectFuture[Any], timeout: float, raise_on_failure: bool = True) -> Any:
    """What future.result(timeout=...) returns (or raises), without its two gaps."""
    return final_state(future, timeout).result(raise_on_failure=raise_on_failure)


async def final_state_async(future: PrefectFuture[Any], timeout: float) -> State:
    """final_state() for async code: it never blocks the event loop."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            state = (await client.read_task_run(future.task_run_id)).state
            if state is not None and state.is_final():
                return state
            if time.monotonic() >= deadline:
                raise _timed_out(future, timeout, state)
            await asyncio.sleep(POLL_SECONDS)


async def result_of_async(
    future: PrefectFuture[Any], timeout: float, raise_on_failure: bool = True
) -> Any:
    """result_of() for async code."""
    state = await final_state_async(future, timeout)
    return await state.aresult(raise_on_failure=raise_on_failure)
