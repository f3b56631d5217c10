"""Step 16: the queue's numbers per task key (runs waiting, the oldest one's wait, runs in
flight, runs stuck, task servers), read from the Prefect API while a backlog builds and
drains, and for a run whose task server died."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import pytest
from harness import (
    RunsEndBetweenPages,
    end_run,
    load_module,
    step_dir,
    step_tasks,
    wait_for,
    waiting_runs,
)
from pinned_tasks import unserved
from prefect.client.orchestration import get_client

from tutorial.runner import wait_until_subscribed

STEP = step_dir(16)
BACKLOG = 6
LOOK = re.compile(
    r"^waiting +(\d+), oldest +(-|[\d.]+ s), running (\d+), stuck (\d+), task servers (\d+)$"
)


@pytest.fixture
def status(client_settings):
    """queue_status.py's function, called as the command calls it: one row per task key."""
    module = load_module(STEP / "queue_status.py")

    def row(task_key: str, stuck_after: float = 600):
        async def read():
            async with get_client() as client:
                return await module.queue_status(client, stuck_after)

        rows = {r.task_key: r for r in asyncio.run(read())}
        return rows.get(task_key)

    return row


def status_command(prefect_server, *args: str) -> str:
    """Run queue_status.py as a user does; its output."""
    command = prefect_server.run_script(STEP / "queue_status.py", *args)
    assert command.code == 0, command.output
    return command.output


def test_submit_py_watches_a_backlog_drain(prefect_server, task_server):
    task_server(STEP / "task_server.py")
    submit = prefect_server.run_script(STEP / "submit.py", timeout=180)

    assert submit.code == 0, submit.output
    lines = submit.output.splitlines()
    submitted = re.compile(r"submitted 12 runs of make_thumbnail-[0-9a-f]{8}")
    assert any(submitted.fullmatch(line) for line in lines), submit.output
    looks = [LOOK.match(line).groups() for line in lines if LOOK.match(line)]
    waiting = [int(look[0]) for look in looks]
    # Everything was submitted before the first look: the queue only shrinks.
    assert waiting == sorted(waiting, reverse=True), submit.output
    assert all(look[4] == "1" and look[3] == "0" for look in looks), submit.output
    assert lines[-2:] == ["drained", "12 thumbnails made"], submit.output


def test_a_backlog_builds_with_no_task_server_and_drains_with_one(
    prefect_server, status, task_server, client_settings
):
    with step_tasks(STEP) as tasks:
        key = tasks.make_thumbnail.task_key
        first_submitted = time.monotonic()
        futures = [tasks.make_thumbnail.delay(f"photo-{n}.jpg") for n in range(BACKLOG)]

        # No task server: every run waits, and nothing serves the key (the alert case).
        row = status(key)
        assert (row.waiting, row.running, row.stuck, row.task_servers) == (BACKLOG, 0, 0, 0)
        assert 0 <= row.oldest_wait_seconds <= time.monotonic() - first_submitted + 1
        # The oldest run's wait grows while nothing runs it.
        older = wait_for(
            lambda: status(key),
            lambda row: row.oldest_wait_seconds >= 3,
            timeout=30,
            what="the oldest run to have waited 3 s",
        )
        assert older.waiting == BACKLOG

        # The command prints the same numbers, as a table and as JSON.
        command = status_command(prefect_server, "--json")
        (printed,) = [row for row in json.loads(command.splitlines()[-1]) if row["task_key"] == key]
        assert (printed["waiting"], printed["running"], printed["task_servers"]) == (BACKLOG, 0, 0)
        assert printed["oldest_wait_seconds"] >= 3

        # A task server (two at a time) drains it.
        server = task_server(STEP / "task_server.py")
        seen = []
        workers = prefect_server.api("POST", "/task_workers/filter", json={})
        try:
            drained = wait_for(
                lambda: seen.append(status(key)) or seen[-1],
                lambda row: row.waiting == 0 and row.running == 0,
                timeout=120,
                interval=0.2,
                what="the backlog to drain",
            )
        except AssertionError as failed:
            # Once, in CI, the task server subscribed and then nothing drained: the keys it
            # subscribed with and what it printed tell a crash from a task key of its own.
            raise AssertionError(f"{failed}\nsubscribed: {workers}\n{server.output}") from None
        assert drained.task_servers == 1
        assert {prefect_server.state_type(str(f.task_run_id)) for f in futures} == {"COMPLETED"}
        waiting = [row.waiting for row in seen]
        assert waiting == sorted(waiting, reverse=True)


def test_a_run_whose_task_server_died_is_stuck_and_its_key_unserved(
    prefect_server, status, spawn, client_settings
):
    """A task server killed mid-run leaves its run Running for good (step 11): the status
    counts it as stuck once it has run longer than --stuck-after, and shows no task server."""
    from pinned_tasks import nap

    server = spawn(Path(__file__).parent / "pinned_task_server.py", TASKS="nap")
    wait_until_subscribed(prefect_server.api_url, server)
    future = nap.delay(120)
    run_id, key = str(future.task_run_id), nap.task_key
    try:
        stranded(prefect_server, server, run_id, key, status)
    finally:
        # Ends the stranded run, so that no later test's reconciler finds it.
        state = {"state": {"type": "CRASHED", "name": "Crashed"}, "force": True}
        prefect_server.api("POST", f"/task_runs/{run_id}/set_state", json=state)


def stranded(prefect_server, server, run_id, key, status) -> None:
    wait_for(
        lambda: prefect_server.state_type(run_id),
        lambda state: state == "RUNNING",
        timeout=60,
        what="the run to start",
    )
    server.stop(grace=0, sig=signal.SIGKILL)

    row = wait_for(
        lambda: status(key, stuck_after=2),
        lambda row: row is not None and row.stuck == 1 and row.task_servers == 0,
        timeout=60,
        what="the run to count as stuck, with no task server",
    )
    assert (row.waiting, row.running) == (0, 1)
    assert status(key, stuck_after=3600).stuck == 0  # within its allowed time: not stuck
    table = status_command(prefect_server, "--stuck-after", "2")
    assert re.search(rf"^{re.escape(key)} +0 +- +1 +0 +1 +0$", table, re.M), table


def test_every_unfinished_run_is_read_while_runs_end_between_pages(prefect_server, client_settings):
    """More runs than one page holds, and a hundred of the first page's end before the next
    page is read (as a task server ends them): read by offset, the next page would start a
    hundred runs too far on and skip them; read from where the last page ended, none is."""
    module = load_module(STEP / "queue_status.py")
    with waiting_runs(prefect_server, unserved, module.PAGE + 50) as ids:

        async def read():
            async with get_client() as client:
                reader = RunsEndBetweenPages(client, prefect_server, ids)
                return await module.background_runs(reader)

        read_back, ours = {str(run.id) for run in asyncio.run(read())}, set(ids)
        assert read_back >= ours, f"{len(ours - read_back)} of {len(ours)} runs not read"


def test_a_cancelling_run_counts_until_a_task_server_ends_it(
    prefect_server, status, client_settings
):
    """Cancelled while no task server of its key runs, a run stays Cancelling (step 15): it
    is no longer waiting, it is not finished, and with no news it is stuck."""
    with waiting_runs(prefect_server, unserved, 1) as (run_id,):
        end_run(prefect_server, run_id, "CANCELLING")
        row = status(unserved.task_key, stuck_after=3600)
        assert (row.waiting, row.running, row.cancelling, row.stuck) == (0, 0, 1, 0)
        assert status(unserved.task_key, stuck_after=0).stuck == 1
        table = status_command(prefect_server)
        assert re.search(rf"^{re.escape(unserved.task_key)} +0 +- +0 +1 +0 +0$", table, re.M)
