"""Step 14: the naive and the fast way to submit runs; every run completes either way.

Speed is never asserted here (the benchmarks measure it); the tests check that both ways
submit every run, that every run completes with the right result, and the reason the fast
way is cheaper: it opens no new API client per run.
"""

from __future__ import annotations

import re

import pytest
from harness import step_dir, step_tasks, wait_for

STEP = step_dir(14)
RUNS = 5  # submit.py submits add_one(0) to add_one(4) each way
FINAL = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]


def count_runs(prefect_server, state_types: list[str] | None = None) -> int:
    """How many runs of the step's task the server holds (in the given state types)."""
    task_runs: dict = {"name": {"any_": ["add_one"]}}
    if state_types:
        task_runs["state"] = {"type": {"any_": state_types}}
    return prefect_server.api("POST", "/task_runs/count", json={"task_runs": task_runs})


def newest_run(prefect_server) -> dict:
    runs = prefect_server.api(
        "POST",
        "/task_runs/filter",
        json={
            "task_runs": {"name": {"any_": ["add_one"]}},
            "sort": "EXPECTED_START_TIME_DESC",
            "limit": 1,
        },
    )
    return runs[0]


def test_both_ways_complete_every_run(prefect_server, task_server, spawn):
    task_server(STEP / "task_server.py")
    before = count_runs(prefect_server)

    submit = spawn(STEP / "submit.py")
    assert submit.wait(timeout=300) == 0, submit.output
    results = str(list(range(1, RUNS + 1)))
    assert f"naive: {results}" in submit.output.splitlines(), submit.output
    assert f"fast:  {results}" in submit.output.splitlines(), submit.output
    # .delay() logs each run it creates; create_run logs none.
    assert len(re.findall(r"Created task run 'add_one'", submit.output)) == RUNS

    # What the API holds: 2 x RUNS new runs, all Completed, none left waiting.
    assert count_runs(prefect_server) - before == 2 * RUNS
    assert count_runs(prefect_server, ["COMPLETED"]) - before == 2 * RUNS

    # The last run came from create_run: a background run like any other.
    run = newest_run(prefect_server)
    assert run["flow_run_id"] is None
    assert run["task_key"].startswith("add_one-")
    assert prefect_server.state_names(run["id"]) == ["Scheduled", "Pending", "Running", "Completed"]
    with step_tasks(STEP):
        assert prefect_server.result(run["id"]) == RUNS  # add_one(RUNS - 1)


@pytest.fixture
def clients_opened(prefect_server, monkeypatch):
    """Point this process at the session's server and count the API clients it opens."""
    from prefect.client.orchestration import PrefectClient
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    opened = []
    original = PrefectClient.__init__

    def counting_init(self, *args, **kwargs):
        opened.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PrefectClient, "__init__", counting_init)
    settings = {PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}
    with temporary_settings(settings):
        yield opened


def wait_until_completed(prefect_server, run_ids: list[str], timeout: float) -> list[str]:
    """The runs' state types, once every one is final. (A run reads with no state for a moment
    while the server writes a new one: step 02.)"""
    return wait_for(
        lambda: [(prefect_server.task_run(i)["state"] or {}).get("type") for i in run_ids],
        lambda states: all(s in FINAL for s in states),
        timeout=timeout,
        interval=0.5,
        what="every run final",
    )


def test_delay_opens_a_client_per_run_and_create_run_reuses_one(
    prefect_server, task_server, clients_opened
):
    """Why the fast way is cheaper: .delay() (and .map) open a new API client per run."""
    import asyncio

    from prefect import get_client

    task_server(STEP / "task_server.py")
    with step_tasks(STEP) as tasks:
        # The first .delay() in a process also opens a client for Prefect's events worker.
        futures = [tasks.add_one.delay(-1)]
        clients_opened.clear()
        futures += [tasks.add_one.delay(n) for n in range(3)]
        futures += tasks.add_one.map([3, 4, 5], deferred=True)
        assert len(futures) == 7
        assert len(clients_opened) == 6  # one new client (and TLS context) per run

        async def fast() -> list:
            async with get_client() as client:
                return [
                    await tasks.add_one.create_run(
                        client=client, parameters={"n": n}, deferred=True
                    )
                    for n in range(3)
                ]

        clients_opened.clear()
        runs = asyncio.run(fast())
        assert len(runs) == 3
        assert len(clients_opened) == 1  # the one get_client() above
        assert all(run.state.name == "Scheduled" for run in runs)

    # Both kinds of run are delivered and completed alike.
    run_ids = [str(f.task_run_id) for f in futures] + [str(run.id) for run in runs]
    assert wait_until_completed(prefect_server, run_ids, timeout=120) == ["COMPLETED"] * 10
