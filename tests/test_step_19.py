"""Step 19: cleanup.py deletes finished background runs that ended before a cut-off, with
their parameters and result files, and nothing else: not an unfinished run, not a newer one,
not a result file a remaining run shares, not a file outside the storage folder; and a pass
that stops halfway leaves no file behind that no run points to. And what Prefect's own
database vacuum removes."""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from harness import PrefectServer, end_run, load_module, step_dir, step_tasks, wait_for
from pinned_tasks import double
from prefect import flow, get_run_logger, tags, task
from prefect.client.orchestration import PrefectClient
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from tutorial.runner import wait_until_subscribed
from tutorial.waiting import result_of

STEP = step_dir(19)
HERE = Path(__file__).parent


@task
def never_served(n: int) -> None:
    """A task no task server serves: its runs never finish."""


def runs_tagged(prefect_server, tag: str) -> list[dict]:
    body = {"task_runs": {"tags": {"all_": [tag]}}, "limit": 200}
    return prefect_server.api("POST", "/task_runs/filter", json=body)


def exists(prefect_server, run_id: str) -> bool:
    response = prefect_server.request("GET", f"/task_runs/{run_id}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def age(server_home: Path, run_ids: list[str], days: int) -> None:
    """Make runs look as if they ended `days` ago: edit the server's own database (the one
    way to have old runs without waiting for them). A run with no end time (unfinished) gets
    one, which the API never gives it: only its state then says it has not ended."""
    with sqlite3.connect(server_home / "prefect.db", timeout=30) as db:
        marks = ",".join("?" * len(run_ids))
        changed = db.execute(
            f"UPDATE task_run SET end_time = datetime(COALESCE(end_time, 'now'), '-{days} days')"
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


def ids(futures) -> list[str]:
    return [str(future.task_run_id) for future in futures]


def reports(tag: str, days: list[str]) -> list[str]:
    """Runs of the step's make_report with a tag, one after the other, each finished."""
    with step_tasks(STEP) as tasks, tags(tag):
        futures = []
        for day in days:
            futures.append(future := tasks.make_report.delay(day))
            result_of(future, timeout=60)
    return ids(futures)


def thirty_days_ago() -> datetime:
    return datetime.now(UTC) - timedelta(days=30)


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
    x = random.randrange(10**9)  # a cache key no other test shares
    with step_tasks(STEP) as tasks, tags("cleanup-test"):
        old = [tasks.make_report.delay(f"old-{n}") for n in range(3)]
        new = [tasks.make_report.delay(f"new-{n}") for n in range(2)]
        # Two runs with one cached result file: the old one and a newer one share it.
        shared_old = double.delay(x)
        result_of(shared_old, timeout=60)
        shared_new = double.delay(x)
        # No task server serves this task: its run stays Scheduled until it is cancelled.
        unfinished = never_served.delay(0)
        for future in [*old, *new, shared_new]:
            result_of(future, timeout=60)
    unfinished_id = str(unfinished.task_run_id)
    # Cancelled while it waits: Cancelling until a task server takes it (step 15); if none
    # ever does, Cancelling for good.
    end_run(prefect_server, unfinished_id, "CANCELLING")
    ended_cached(prefect_server, ids([shared_new])[0])
    (shared_file,) = {
        f for f in files_of(prefect_server, ids([shared_old])[0]) if "parameters" not in f.parts
    }
    assert shared_file in files_of(prefect_server, ids([shared_new])[0])
    old_files = [f for run_id in ids(old) for f in files_of(prefect_server, run_id)]
    new_files = [f for run_id in ids(new) for f in files_of(prefect_server, run_id)]
    assert len(old_files) == 6 and all(f.is_file() for f in old_files + new_files)
    unfinished_files = files_of(prefect_server, unfinished_id)
    assert len(unfinished_files) == 1 and unfinished_files[0].is_file()
    # The unfinished run gets an end time 40 days old too: only its state can keep it.
    age(prefect_server.home, [*ids([*old, shared_old]), unfinished_id], days=40)

    wait_for(
        lambda: logs_of(prefect_server, ids(old)),
        # One print each, but log_prints can lose some: SURPRISES.md, "log prints lost".
        lambda logs: len(logs) >= 1,
        timeout=60,
        what="the old runs' log lines",
    )
    dry = cleanup(prefect_server, "--older-than-days", "30", "--tag", "cleanup-test", "--dry-run")
    assert re.search(r"^would delete 4 runs .* and 7 files ", dry, re.M), dry
    assert all(exists(prefect_server, run_id) for run_id in ids([*old, shared_old]))
    assert all(f.is_file() for f in old_files)

    done = cleanup(prefect_server, "--older-than-days", "30", "--tag", "cleanup-test")
    # 3 old reports (a parameters and a result file each) and the old cached run's
    # parameters file: its result file is the newer run's too.
    assert re.search(
        r"^deleted 4 runs that ended before .* and 7 files \(0\.0 MB\);"
        r" 1 result files kept for runs that remain$",
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
    # Kept: the newer runs and their files, the shared result file, the unfinished run with
    # its parameters file (a task server that takes it still reads that file).
    assert all(exists(prefect_server, run_id) for run_id in ids([*new, shared_new]))
    assert all(f.is_file() for f in new_files) and shared_file.is_file()
    assert prefect_server.state_type(unfinished_id) == "CANCELLING"
    assert unfinished_files[0].is_file()
    assert prefect_server.result(ids([shared_new])[0]) == 2 * x
    prefect_server.request("DELETE", f"/task_runs/{unfinished_id}")


def ended_cached(prefect_server, run_id: str) -> None:
    """The run's states, reported as events, reach the API a moment after the run ends."""
    wait_for(
        lambda: prefect_server.state_names(run_id),
        lambda names: names[-1:] == ["Cached"],
        timeout=60,
        what=f"run {run_id} to be recorded Cached",
    )


@flow
def reuse_in_a_flow(x: int) -> str:
    """A flow whose task is a cache hit on a background run's result file."""
    return str(double(x, return_state=True).state_details.task_run_id)


def test_a_result_file_a_run_in_a_flow_shares_is_kept(prefect_server, task_server, client_settings):
    task_server(HERE / "pinned_task_server.py", TASKS="double")
    x = random.randrange(10**9)
    with tags("cleanup-in-flow"):
        background = double.delay(x)
        assert result_of(background, timeout=60) == 2 * x
    (run_id,) = ids([background])
    in_flow = reuse_in_a_flow(x)
    ended_cached(prefect_server, in_flow)
    (shared,) = files_of(prefect_server, in_flow)
    assert shared in files_of(prefect_server, run_id)
    age(prefect_server.home, [run_id], days=40)

    done = cleanup(prefect_server, "--older-than-days", "30", "--tag", "cleanup-in-flow")

    assert re.search(r"^deleted 1 runs .* and 1 files .*; 1 result files kept", done, re.M), done
    assert not exists(prefect_server, run_id)
    assert shared.is_file() and prefect_server.result(in_flow) == 2 * x


def test_a_run_that_ended_exactly_at_the_cut_off_goes_with_its_files(
    prefect_server, task_server, client_settings
):
    """The server's end_time.before_ is inclusive: a run that ended at the cut-off is
    deleted, so no run that remains keeps its result file."""
    task_server(STEP / "task_server.py")
    at_cut_off, after = reports("cleanup-cut-off", ["at the cut-off", "just after"])
    cut_off = datetime.fromisoformat(prefect_server.task_run(at_cut_off)["end_time"])
    files = {run_id: files_of(prefect_server, run_id) for run_id in (at_cut_off, after)}
    assert all(len(f) == 2 and all(p.is_file() for p in f) for f in files.values())

    report = asyncio.run(load_module(STEP / "cleanup.py").clean_up(cut_off, "cleanup-cut-off"))

    assert (report.runs, report.files, report.kept_shared) == (1, 2, 0), report
    assert not exists(prefect_server, at_cut_off)
    assert not any(f.exists() for f in files[at_cut_off])
    assert exists(prefect_server, after) and all(f.is_file() for f in files[after])


def test_a_storage_key_outside_the_storage_folder_is_never_deleted(
    prefect_server, task_server, client_settings
):
    """A result record is data in the database: whatever path it names, cleanup.py deletes
    only files inside the storage folder, and keeps the run that names the others."""
    task_server(STEP / "task_server.py")
    (run_id,) = reports("cleanup-outside", ["elsewhere"])
    parameters = files_of(prefect_server, run_id)[0]
    outside = prefect_server.home / f"not-a-result-{uuid4()}"
    outside.write_text("someone else's file")
    key = prefect_server.home / "storage" / ".." / outside.name  # inside, until resolved
    completed = prefect_server.task_run(run_id)["state"]
    state = {"type": "COMPLETED", "name": "Completed", "data": {**completed["data"]}}
    state["data"]["storage_key"] = str(key)
    body = {"state": state, "force": True}
    prefect_server.api("POST", f"/task_runs/{run_id}/set_state", json=body)
    age(prefect_server.home, [run_id], days=40)

    done = cleanup(prefect_server, "--older-than-days", "30", "--tag", "cleanup-outside")

    assert re.search(r"^deleted 0 runs .* and 0 files ", done, re.M), done
    storage = (prefect_server.home / "storage").resolve()
    assert f"left 1 files outside {storage}, and their runs:\n  {key}" in done, done
    assert outside.read_text() == "someone else's file"
    assert exists(prefect_server, run_id) and parameters.is_file()


class Crash(Exception):
    """The clean-up's process dies here (killed, out of memory, the machine restarts)."""


def test_a_pass_that_stops_halfway_or_overlaps_another_orphans_no_file(
    prefect_server, task_server, client_settings, monkeypatch
):
    task_server(STEP / "task_server.py")
    run_ids = reports("cleanup-crash", ["one", "two", "three"])
    files = {run_id: files_of(prefect_server, run_id) for run_id in run_ids}
    assert all(len(f) == 2 and all(p.is_file() for p in f) for f in files.values())
    age(prefect_server.home, run_ids, days=40)
    cleanup_py = load_module(STEP / "cleanup.py")
    delete = PrefectClient.delete_task_run

    async def delete_then_crash(client, task_run_id):
        await delete(client, task_run_id)
        raise Crash

    monkeypatch.setattr(PrefectClient, "delete_task_run", delete_then_crash)
    with pytest.raises(Crash):
        asyncio.run(cleanup_py.clean_up(thirty_days_ago(), "cleanup-crash"))
    # A run that is gone took its files with it; the others still lead to theirs.
    gone = [run_id for run_id in run_ids if not exists(prefect_server, run_id)]
    assert len(gone) == 1
    assert not any(f.exists() for f in files[gone[0]])

    async def deleted_by_another_clean_up(client, task_run_id):
        prefect_server.request("DELETE", f"/task_runs/{task_run_id}")
        await delete(client, task_run_id)  # 404

    monkeypatch.setattr(PrefectClient, "delete_task_run", deleted_by_another_clean_up)
    report = asyncio.run(cleanup_py.clean_up(thirty_days_ago(), "cleanup-crash"))

    assert (report.runs, report.files) == (0, 4), report  # the other one deleted the runs
    assert not any(exists(prefect_server, run_id) for run_id in run_ids)
    assert not any(f.exists() for paths in files.values() for f in paths)


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
                # Not .result(): it fails at once on a run caught with no state yet
                # (tutorial/SURPRISES.md); result_of polls the state, bounded.
                result_of(background, timeout=60)
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
            return server.request("GET", f"/flow_runs/{flow_run_id}").status_code

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
