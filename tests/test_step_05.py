"""Step 05: cached runs skip the task body; a key on the address sends one welcome email,
even for two requests at once; a task with no policy is not cached on a task server."""

import asyncio
import re
import threading
import time
from datetime import datetime

import pytest
from harness import UUID, load_module, step_dir, wait_for
from prefect import task
from prefect.cache_policies import DEFAULT, INPUTS, NO_CACHE, TASK_SOURCE
from prefect.locking.filesystem import FileSystemLockManager
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.task_worker import TaskWorker

STEP = step_dir(5)
LINE = re.compile(r"^(?P<call>\w+\(.*\)): (?P<state>\w+) -> (?P<result>.+)$")
RECEIVED = re.compile(rf"Received task run: ({UUID}) - (\w+)$")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A Prefect home of the module's own: records and locks of earlier runs of this step in
    the session (the runner's test runs it too) must not make the first run Cached."""
    return tmp_path_factory.mktemp("step-05-home")


@pytest.fixture(scope="module")
def served(prefect_server, home):
    """One task server for the module, on that home."""
    with prefect_server.serving(STEP / "task_server.py", PREFECT_HOME=str(home)) as process:
        yield process


def outcomes(output: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in output.splitlines() if (m := LINE.match(line))]


def received(served, since: int, count: int) -> list[tuple[str, str]]:
    """(run id, task name) of the runs the task server received after line `since`."""
    return wait_for(
        lambda: [m.groups() for line in served.lines[since:] if (m := RECEIVED.search(line))],
        lambda runs: len(runs) >= count,
    )


def printed(served, since: int, text: str) -> int:
    """How many times task bodies printed `text` after line `since`: the work really done."""
    return sum(text in line for line in served.lines[since:])


def timestamps(prefect_server, run_id: str) -> dict[str, datetime]:
    states = prefect_server.api("GET", "/task_run_states/", params={"task_run_id": run_id})
    return {s["name"]: datetime.fromisoformat(s["timestamp"]) for s in states}


CALLS = [
    "build_report('2026-11-25')",
    "build_report('2026-11-25')",
    "send_welcome_email('ada@example.com', 'Ada')",
    "send_welcome_email('Ada@Example.com', 'Ada Lovelace')",
]
REPORT = "'report for 2026-11-25: 42 orders'"
# Whichever email run takes the lock first sends; both print what it stored.
EMAILS = {
    "send_welcome_email('ada@example.com', 'Ada')": "'welcome email sent to Ada <ada@example.com>'",
    "send_welcome_email('Ada@Example.com', 'Ada Lovelace')": (
        "'welcome email sent to Ada Lovelace <Ada@Example.com>'"
    ),
}


def test_cached_runs_do_not_run_the_body_again(prefect_server, served, home):
    since = len(served.lines)

    first = prefect_server.run_script(STEP / "submit.py", timeout=120, PREFECT_HOME=str(home))

    assert first.code == 0, first.output
    runs = outcomes(first.output)
    assert [r["call"] for r in runs] == CALLS
    assert [r["result"] for r in runs[:2]] == [REPORT, REPORT]
    # One email sent, the other Cached with the sender's result, whatever its own arguments.
    sender = next(r for r in runs[2:] if r["state"] == "Completed")
    assert [r["result"] for r in runs[2:]] == [EMAILS[sender["call"]]] * 2
    (report, report_again), emails = [
        [run_id for run_id, name in received(served, since, 4) if name == task_name]
        for task_name in ("build_report", "send_welcome_email")
    ]
    # What submit.py printed is what the API recorded.
    states = {i: prefect_server.task_run(i)["state"] for i in (report, report_again, *emails)}
    assert [r["state"] for r in runs[:2]] == [states[report]["name"], states[report_again]["name"]]
    assert sorted(r["state"] for r in runs[2:]) == sorted(states[i]["name"] for i in emails)

    # Same inputs, one after the other: Completed, then Cached with the same result, and the
    # body ran once.
    assert prefect_server.state_names(report) == ["Scheduled", "Pending", "Running", "Completed"]
    assert prefect_server.state_names(report_again) == ["Scheduled", "Pending", "Running", "Cached"]
    assert states[report_again]["type"] == "COMPLETED"
    assert prefect_server.result(report_again) == "report for 2026-11-25: 42 orders"
    assert printed(served, since, "building the report for 2026-11-25") == 1

    # Two emails to one address submitted together: one sent, the other Cached with its
    # result. They ran at the same time: the Cached one was Running before the other
    # finished, and waited on the lock instead of sending.
    sent, cached = sorted(emails, key=lambda i: states[i]["name"] == "Cached")
    assert (states[sent]["name"], states[cached]["name"]) == ("Completed", "Cached")
    assert (
        timestamps(prefect_server, cached)["Running"]
        < timestamps(prefect_server, sent)["Completed"]
    )
    assert printed(served, since, "sending a welcome email to") == 1

    # Run it again: the records are in result storage, so every run is Cached and no body runs.
    since = len(served.lines)

    second = prefect_server.run_script(STEP / "submit.py", timeout=120, PREFECT_HOME=str(home))

    assert second.code == 0, second.output
    runs = outcomes(second.output)
    assert [(r["call"], r["state"]) for r in runs] == [(call, "Cached") for call in CALLS]
    for run_id, _ in received(served, since, 4):
        assert prefect_server.task_run(run_id)["state"]["name"] == "Cached"
    assert printed(served, since, "building the report") == 0
    assert printed(served, since, "sending a welcome email") == 0


def test_a_task_server_persists_results_with_the_default_policy():
    """A task with no cache policy gets DEFAULT = INPUTS + TASK_SOURCE + RUN_ID, and a task
    server turns on result persistence (even NO_CACHE becomes DEFAULT there). Outside a
    flow RUN_ID is the task run's own id, so identical .delay() calls never share a key."""

    @task
    def no_policy(page: str) -> str:
        return page

    @task(cache_policy=NO_CACHE)
    def no_cache(page: str) -> str:
        return page

    assert no_policy.cache_policy == DEFAULT
    assert no_policy.persist_result is None  # off by default when run in-process

    async def served():
        return TaskWorker(no_policy, no_cache).tasks

    for served_task in asyncio.run(served()):
        assert served_task.cache_policy == DEFAULT
        assert served_task.persist_result is True


def test_inputs_alone_is_shared_by_every_task(prefect_server, tmp_path):
    """Why build_report adds TASK_SOURCE: INPUTS hashes the arguments only, so two tasks
    called with the same arguments share a cache key, and the second returns the first's
    result."""

    @task(cache_policy=INPUTS, persist_result=True)
    def daily_orders(day: str) -> str:
        return f"orders on {day}"

    @task(cache_policy=INPUTS, persist_result=True)
    def daily_refunds(day: str) -> str:
        return f"refunds on {day}"

    @task(cache_policy=INPUTS + TASK_SOURCE, persist_result=True)
    def daily_signups(day: str) -> str:
        return f"signups on {day}"

    settings = {
        PREFECT_API_URL: prefect_server.api_url,
        PREFECT_HOME: prefect_server.home,
        PREFECT_LOCAL_STORAGE_PATH: tmp_path / "storage",
    }
    with temporary_settings(settings):
        assert daily_orders("2026-11-25") == "orders on 2026-11-25"
        refunds = daily_refunds("2026-11-25", return_state=True)
        signups = daily_signups("2026-11-25", return_state=True)

        assert refunds.name == "Cached"
        assert refunds.result() == "orders on 2026-11-25"
        assert signups.name == "Completed"
        assert signups.result() == "signups on 2026-11-25"


def test_prefects_file_lock_fails_while_a_lock_file_is_being_written(tmp_path):
    """Why locks.py exists: FileSystemLockManager (3.9.1) creates a lock file empty and
    writes its holder afterwards. A second run that looks at it in between, as the second
    of two identical runs starting together does, raises instead of waiting."""
    (tmp_path / "welcome-email-ada.lock").touch()  # the first run, between touch and write
    manager = FileSystemLockManager(lock_files_directory=tmp_path)

    with pytest.raises(ValueError, match="EOF while parsing"):
        manager.acquire_lock("welcome-email-ada", holder="second run", acquire_timeout=1)


def test_atomic_file_locks_let_one_holder_in_at_a_time(tmp_path):
    """Four runs of one key start at the same moment, 20 times over: none fails, and the
    lock never has two holders at once."""
    manager = load_module(STEP / "locks.py").AtomicFileLockManager(lock_files_directory=tmp_path)
    errors, holders = [], []
    most_holders = 0
    guard = threading.Lock()

    def run(key: str, holder: str, start: threading.Barrier) -> None:
        nonlocal most_holders
        start.wait()
        try:
            assert manager.acquire_lock(key, holder)
            with guard:
                holders.append(holder)
                most_holders = max(most_holders, len(holders))
            time.sleep(0.001)  # hold the lock a moment, so that an overlap would show
            with guard:
                holders.remove(holder)
            manager.release_lock(key, holder)
        except Exception as error:
            errors.append(error)

    for round_ in range(20):
        start = threading.Barrier(4)
        threads = [
            threading.Thread(target=run, args=(f"key-{round_}", f"run {n}", start))
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads), "a run never got the lock"

    assert errors == []
    assert most_holders == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock or staged file left


def test_atomic_file_locks_wait_time_out_and_expire(tmp_path):
    """The rest of what Prefect's transactions ask of a lock manager still holds."""
    manager = load_module(STEP / "locks.py").AtomicFileLockManager(lock_files_directory=tmp_path)

    assert manager.acquire_lock("key", "first", hold_timeout=1)
    assert manager.acquire_lock("key", "first")  # the holder may take it again
    assert manager.is_lock_holder("key", "first")
    assert not manager.acquire_lock("key", "second", acquire_timeout=0.2)
    assert not manager.acquire_lock("key", "second", acquire_timeout=0)  # do not wait
    # Once the hold timeout has passed the lock counts as free.
    assert manager.acquire_lock("key", "second", acquire_timeout=5)
    assert manager.is_lock_holder("key", "second")
    manager.release_lock("key", "second")
    assert not manager.is_locked("key")

    async def two_async_runs() -> list[str]:
        order = []

        async def run(holder: str) -> None:
            await manager.aacquire_lock("async-key", holder)
            order.append(f"{holder} in")
            await asyncio.sleep(0.05)
            order.append(f"{holder} out")
            manager.release_lock("async-key", holder)

        await asyncio.gather(run("a"), run("b"))
        return order

    order = asyncio.run(two_async_runs())
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])
