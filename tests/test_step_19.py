"""Step 19: cleanup.py deletes finished background runs that ended before a cut-off, with
their parameters and result files, and nothing else: not an unfinished run, not a newer one,
not a result file a newer run shares. And what Prefect's own database vacuum removes."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
from harness import PrefectServer, step_dir, step_tasks, wait_for
from prefect import flow, get_run_logger, task
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from tutorial.runner import wait_until_subscribed

STEP = step_dir(19)
HERE = Path(__file__).parent


@task
def never_served() -> None:
    """A task no task server serves: its runs never finish."""


def runs_tagged(prefect_server, tag: str) -> list[dict]:
    body = {"task_runs": {"tags": {"all_": [tag]}}, "limit": 200}
    return prefect_server.api("POST", "/task_runs/filter", json=body)


def exists(prefect_server, run_id: str) -> bool:
    response = httpx.get(f"{prefect_server.api_url}/task_runs/{run_id}", timeout=30)
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def age(server_home: Path, run_ids: list[str], days: int) -> None:
    """Make finished runs look as if they ended `days` ago: edit the server's own database
    (the one way to have old runs without waiting for them)."""
    with sqlite3.connect(server_home / "prefect.db", timeout=30) as db:
        marks = ",".join("?" * len(run_ids))
        changed = db.execute(
            f"UPDATE task_run SET end_time = datetime(end_time, '-{days} days')"
            f" WHERE id IN ({marks})",
            run_ids,
        ).rowcount
    assert changed == len(run_ids)


def files_of(prefect_server, run_id: str) -> list[Path]:
    """The run's parameters file and result file, as Prefect records them."""
    files = []
    for state in prefect_server.api("GET", "/task_run_states/", params={"task_run_id": run_id}):
        if parameters_id := state["state_details"].get("task_parameters_id"):
            files.append(prefect_server.home / "storage" / "parameters" / parameters_id)
        if state["data"] and state["data"].get("storage_key"):
            files.append(Path(state["data"]["storage_key"]))
    return files


def logs_of(prefect_server, run_ids: list[str]) -> list[dict]:
    body = {"logs": {"task_run_id": {"any_": run_ids}}}
    return prefect_server.api("POST", "/logs/filter", json=body)


def cleanup(prefect_server, *args: str) -> str:
    process = prefect_server.run_script(STEP / "cleanup.py", *args)
    assert process.code == 0, process.output
    return process.output


def test_submit_py_deletes_the_older_runs_and_keeps_the_newer(prefect_server, task_server):
    task_server(STEP / "task_server.py")
    submit = prefect_server.run_script(STEP / "submit.py", timeout=300)

    assert submit.code == 0, submit.output
    lines = submit.output.splitlines()
    deleted = [line for line in lines if line.startswith("deleted ")]
    assert len(deleted) == 1, submit.output
    assert re.fullmatch(
        r"deleted 6 runs that ended before the cut-off, and their 12 files \(\d+ kB\)", deleted[0]
    )
    days = ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]
    assert f"kept 4 newer runs, results intact: {days}" in lines
    kept = runs_tagged(prefect_server, "retention-demo")
    assert len(kept) == 4
    assert {run["state"]["type"] for run in kept} == {"COMPLETED"}


def test_only_old_finished_runs_and_the_files_no_newer_run_needs_are_deleted(
    prefect_server, task_server, client_settings
):
    task_server(STEP / "task_server.py")
    task_server(HERE / "pinned_task_server.py", TASKS="double")
    from pinned_tasks import double

    with step_tasks(STEP) as tasks:
        from prefect import tags

        with tags("cleanup-test"):
            old = [tasks.make_report.delay(f"old-{n}") for n in range(3)]
            new = [tasks.make_report.delay(f"new-{n}") for n in range(2)]
            # Two runs with one cached result file: the old one and a newer one share it.
            shared_old = double.delay(1000)
            shared_old.result(timeout=60)
            shared_new = double.delay(1000)
            # No task server serves this task: its run stays Scheduled.
            unfinished = never_served.delay()
        for future in [*old, *new, shared_new]:
            future.result(timeout=60)
    ids = lambda futures: [str(f.task_run_id) for f in futures]  # noqa: E731
    assert prefect_server.state_names(ids([shared_new])[0])[-1] == "Cached"
    (shared_file,) = {
        f for f in files_of(prefect_server, ids([shared_old])[0]) if "parameters" not in f.parts
    }
    assert shared_file in files_of(prefect_server, ids([shared_new])[0])
    old_files = [f for run_id in ids(old) for f in files_of(prefect_server, run_id)]
    new_files = [f for run_id in ids(new) for f in files_of(prefect_server, run_id)]
    assert len(old_files) == 6 and all(f.is_file() for f in old_files + new_files)
    age(prefect_server.home, ids([*old, shared_old]), days=40)
    # The unfinished run has no end: nothing dates it as done, whatever its age.

    wait_for(
        lambda: logs_of(prefect_server, ids(old)),
        # One print each, but log_prints can lose some: SURPRISES.md, "log prints lost".
        lambda logs: len(logs) >= 1,
        timeout=60,
        what="the old runs' log lines",
    )
    dry = cleanup(prefect_server, "--older-than-days", "30", "--tag", "cleanup-test", "--dry-run")
    assert "would delete 4 runs" in dry, dry
    assert all(exists(prefect_server, run_id) for run_id in ids([*old, shared_old]))
    assert all(f.is_file() for f in old_files)

    done = cleanup(prefect_server, "--older-than-days", "30", "--tag", "cleanup-test")
    # 3 old reports (a parameters and a result file each) and the old cached run's
    # parameters file: its result file is the newer run's too.
    assert re.search(
        r"^deleted 4 runs that ended before .* and 7 files \(0\.0 MB\);"
        r" 1 result files kept for newer runs$",
        done,
        re.M,
    ), done
    assert not any(exists(prefect_server, run_id) for run_id in ids([*old, shared_old]))
    # The server deletes a deleted run's log lines too, in a job of its own, a moment later.
    wait_for(
        lambda: logs_of(prefect_server, ids(old)),
        lambda logs: logs == [],
        timeout=60,
        what="the deleted runs' log lines to be deleted",
    )
    assert not any(f.exists() for f in old_files)
    # Kept: the newer runs and their files, the shared result file, the unfinished run.
    assert all(exists(prefect_server, run_id) for run_id in ids([*new, shared_new]))
    assert all(f.is_file() for f in new_files) and shared_file.is_file()
    assert prefect_server.state_type(str(unfinished.task_run_id)) == "SCHEDULED"
    assert prefect_server.result(ids([shared_new])[0]) == 2000


VACUUM = {
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": "3601",  # over an hour, its least
}


@flow
def a_flow() -> int:
    get_run_logger().info("a flow run's log line")
    return 1


def test_prefects_vacuum_deletes_old_flow_runs_but_not_old_background_runs(tmp_path):
    """Prefect 3.9's database vacuum, with flow-run deletion switched on, deletes a flow run
    that ended long ago with its logs; a background task run as old stays, with its states
    and its logs. Nothing in Prefect deletes background runs."""
    with PrefectServer.start(tmp_path, **VACUUM) as server:

        def logs_of(**which: str) -> list[dict]:
            body = {"logs": {key: {"any_": [value]} for key, value in which.items()}}
            return server.api("POST", "/logs/filter", json=body)

        settings = {PREFECT_API_URL: server.api_url, PREFECT_HOME: server.home}
        task_server = server.spawn(HERE / "pinned_task_server.py", TASKS="shout")
        try:
            wait_until_subscribed(server.api_url, task_server)
            with temporary_settings(settings):
                from pinned_tasks import shout

                background = shout.delay("old background run", 0)
                background.result(timeout=60)
                flow_run_id = str(a_flow(return_state=True).state_details.flow_run_id)
            run_id = str(background.task_run_id)
            # Logs reach the server in batches: both runs' lines are in before they age.
            wait_for(
                lambda: (logs_of(task_run_id=run_id), logs_of(flow_run_id=flow_run_id)),
                lambda logs: all(logs),
                timeout=60,
                what="both runs' log lines",
            )
        finally:
            task_server.stop()
        with sqlite3.connect(server.home / "prefect.db", timeout=30) as db:
            for table, row in (("task_run", run_id), ("flow_run", flow_run_id)):
                db.execute(
                    f"UPDATE {table} SET end_time = datetime('now', '-2 days') WHERE id = ?", (row,)
                )

        def flow_run_status() -> int:
            return httpx.get(f"{server.api_url}/flow_runs/{flow_run_id}", timeout=30).status_code

        wait_for(
            flow_run_status,
            lambda code: code == 404,
            timeout=120,
            what="the vacuum to delete the flow run",
        )
        wait_for(
            lambda: logs_of(flow_run_id=flow_run_id),
            lambda logs: logs == [],
            timeout=60,
            what="the vacuum to delete the flow run's logs",
        )
        assert server.state_names(run_id) == ["Scheduled", "Pending", "Running", "Completed"]
        assert any("old background run" in log["message"] for log in logs_of(task_run_id=run_id))
