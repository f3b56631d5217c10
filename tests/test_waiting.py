"""tutorial/waiting.py: the one way the steps wait for a background run."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import uuid
from pathlib import Path

import pytest
from harness import PrefectServer, wait_for
from prefect.exceptions import FailedRun

from tutorial.waiting import final_state, result_of, result_of_async

HERE = Path(__file__).parent
TIMEOUT = 60


@pytest.fixture(scope="module")
def one_task_server(prefect_server: PrefectServer):
    """One task server for the tests that only need the tasks served."""
    with prefect_server.serving(HERE / "pinned_task_server.py") as process:
        yield process


@pytest.fixture
def served(client_settings, one_task_server):
    pass


def test_a_cached_run_is_seen_as_soon_as_it_ends(served):
    from pinned_tasks import double

    x = uuid.uuid4().int % 10**9
    assert result_of(double.delay(x), timeout=TIMEOUT) == 2 * x
    future = double.delay(x)
    started = time.monotonic()
    assert result_of(future, timeout=TIMEOUT) == 2 * x
    # future.result(timeout=TIMEOUT) would return this value only after the whole timeout.
    assert time.monotonic() - started < TIMEOUT
    assert final_state(future, timeout=TIMEOUT).name == "Cached"


def test_future_result_hears_a_cached_run_only_when_its_timeout_is_up(client_settings, task_server):
    """The gap result_of closes: result() listens for events named after final state types,
    and a Cached run's event is named Cached. If Prefect ever hears it, this test fails and
    the workaround can go."""
    from pinned_tasks import square

    x = uuid.uuid4().int % 10**9
    served = task_server(HERE / "pinned_task_server.py", TASKS="square")
    assert result_of(square.delay(x), timeout=TIMEOUT) == x * x
    served.stop()

    future = square.delay(x)  # nobody serves square now: it waits, Scheduled
    returned = []

    def wait_with_result() -> None:
        try:
            returned.append(future.result(timeout=30))
        except Exception as exc:
            returned.append(exc)

    # The thread sees this test's Prefect settings only through a copy of its context.
    waiting = threading.Thread(target=contextvars.copy_context().run, args=(wait_with_result,))
    started = time.monotonic()
    waiting.start()
    try:
        task_server(HERE / "pinned_task_server.py", TASKS="square")
        assert final_state(future, timeout=TIMEOUT).name == "Cached"
        ended_after = time.monotonic() - started
        still_waiting = waiting.is_alive()
    finally:
        waiting.join(timeout=TIMEOUT)
    assert ended_after < 30, "the run ended after result()'s timeout: nothing to learn here"
    assert still_waiting, f"result() heard the Cached run: Prefect closed the gap ({returned})"
    assert returned == [x * x]  # once its timeout was up, it read the state and returned


def test_a_timed_out_run_raises_its_failure_as_soon_as_it_ends(served):
    from pinned_tasks import too_slow

    future = too_slow.delay()
    started = time.monotonic()
    with pytest.raises(FailedRun, match="exceeded timeout"):
        result_of(future, timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT
    assert final_state(future, timeout=TIMEOUT).name == "TimedOut"


def test_a_failed_run_raises_its_exception_or_returns_it(served):
    from pinned_tasks import fails

    future = fails.delay()
    with pytest.raises(ValueError, match="no luck"):
        result_of(future, timeout=TIMEOUT)
    error = result_of(future, timeout=TIMEOUT, raise_on_failure=False)
    assert isinstance(error, ValueError)


def test_the_async_twin_returns_the_same(served):
    from pinned_tasks import double

    assert asyncio.run(result_of_async(double.delay(21), timeout=TIMEOUT)) == 42


def test_a_run_nobody_serves_times_out_when_the_timeout_is_up(client_settings):
    from prefect import task

    @task(name=f"nobody-serves-{uuid.uuid4().hex[:8]}")
    def unserved() -> None:
        pass

    future = unserved.delay()
    with pytest.raises(TimeoutError, match=f"{future.task_run_id} did not end within 1 s"):
        result_of(future, timeout=1)


def test_the_no_state_moment_is_waited_out(
    prefect_server: PrefectServer, client_settings, task_server
):
    """The server records a reported state in two writes, the run's pointer to its new state
    and then the state row, and on SQLite they are not one transaction. A trigger makes the
    second write fail for one run's Completed state, so the run reads as having no state:
    future.result() raises at once, result_of keeps waiting until the server writes the
    state on its next try. If Prefect ever makes the two writes one transaction, the run
    reads Running instead and this test fails: then the workaround can go."""
    from pinned_tasks import double

    future = double.delay(uuid.uuid4().int % 10**9)  # no task server yet: it waits, Scheduled
    run_id = str(future.task_run_id)
    held_back = f"NEW.task_run_id = '{run_id}' AND NEW.type = 'COMPLETED'"
    with prefect_server.states_held_back(held_back):
        task_server(HERE / "pinned_task_server.py")
        run = wait_for(
            lambda: prefect_server.task_run(run_id),
            lambda run: run["state_type"] == "COMPLETED",
            timeout=TIMEOUT,
        )
        assert run["state"] is None and run["state_id"]
        with pytest.raises(RuntimeError, match=f"Task run {run_id} has no state"):
            future.result(timeout=TIMEOUT)
    assert isinstance(result_of(future, timeout=TIMEOUT), int)
    assert prefect_server.task_run(run_id)["state"]["name"] == "Completed"
