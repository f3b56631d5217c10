"""Step 10: watching background runs from outside. The task server's status endpoint, the
CLI, the logs and the event stream are read while (or after) submit.py runs its batch, and
submit.py's summary is checked against what the Prefect API says about the same runs."""

from __future__ import annotations

import itertools
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import UUID, PrefectServer, step_dir, wait_for

from tutorial.runner import ROOT, Process, free_port, wait_until_subscribed

STEP = step_dir(10)
RUNS = 20  # submit.py's batch: file ids 1 to 20
FAILED_FILES = {9, 19}  # ids ending in 9 fail on every attempt
FLAKY_FILES = {4, 14}  # ids ending in 4 fail once, then succeed
PREFECT = str(Path(sys.executable).with_name("prefect"))


# A version of import_file whose runs time out: another task key, so its own task server.
TIMING_OUT = """import asyncio
import sys

from prefect import task
from prefect.task_worker import serve


@task(timeout_seconds=1)
async def import_file(file_id: int) -> str:
    await asyncio.sleep(10)
    return "never"


if __name__ == "__main__":
    if sys.argv[1:] == ["submit"]:
        print(f"submitted {import_file.delay(1).task_run_id}", flush=True)
    else:
        serve(import_file)
"""


# Why task_server.py calls aserve in its own event loop instead of serve().
SERVE_WITH_STATUS = """import sys

sys.path.insert(0, {step!r})
from prefect.task_worker import serve
from tasks import import_file

serve(import_file, status_server_port={port})
"""


@dataclass
class Batch:
    """One run of submit.py against a task server of its own, and what was seen meanwhile."""

    submit: Process
    task_server: Process
    events: Process
    watcher: Process
    timing_out: Process  # submits one run of TIMING_OUT, which a task server of its own serves
    crashing: Process  # serve() with a status port, which crashes at start-up
    tag: str
    runs: list[dict[str, Any]]  # the batch's task runs, read back from the API by tag
    histories: dict[str, list[dict[str, Any]]]  # run id -> states, oldest first
    before: dict[str, Any]  # the status before the batch
    busy: list[dict[str, Any]]  # status snapshots taken while runs were in flight
    idle: dict[str, Any]  # the status once the batch was over


def status(port: int) -> dict[str, Any]:
    response = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5)
    response.raise_for_status()
    return response.json()


def prefect_cli(server: PrefectServer, *commands: list[str]) -> list[str]:
    """Run `prefect` commands against the test server, as a user would in a terminal (all at
    once: each one spends seconds importing Prefect). Returns their outputs, in order."""
    env = {**server.env, "COLUMNS": "200"}  # wide enough for whole run ids in tables
    processes = [
        subprocess.Popen(
            [PREFECT, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in commands
    ]
    outputs = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=120)
        finally:
            process.kill()
        assert process.returncode == 0, output
        outputs.append(output)
    return outputs


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def logs(server: PrefectServer, run_id: str, *expected: str) -> list[dict[str, Any]]:
    """The run's logs in the API, once they hold every `expected` text (logs are sent to the
    API in batches, every couple of seconds)."""
    deadline = time.monotonic() + 30
    while True:
        found = server.api(
            "POST", "/logs/filter", json={"logs": {"task_run_id": {"any_": [run_id]}}}
        )
        text = "\n".join(log["message"] for log in found)
        if all(e in text for e in expected) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(scope="module")
def batch(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Batch]:
    port = free_port()
    scripts = tmp_path_factory.mktemp("step10")
    timing_out = scripts / "timing_out.py"
    timing_out.write_text(TIMING_OUT)
    serve_with_status = scripts / "serve_with_status.py"
    serve_with_status.write_text(SERVE_WITH_STATUS.format(step=str(STEP), port=free_port()))
    processes: list[Process] = []
    try:
        task_server = prefect_server.spawn(
            STEP / "task_server.py", TASK_SERVER_STATUS_PORT=str(port)
        )
        processes.append(task_server)
        # `prefect events stream` prints every event the server receives from now on.
        events = Process(
            "events",
            [PREFECT, "events", "stream", "--format", "text"],
            env=prefect_server.env,
            echo=False,
        )
        processes.append(events)
        watcher = prefect_server.spawn(STEP / "watch_failures.py")
        processes.append(watcher)
        timing_out_server = prefect_server.spawn(timing_out)
        processes.append(timing_out_server)
        # Started now, to overlap the batch; their tests read them later. The run waits in
        # the server's queue until its task server subscribes.
        argv = [sys.executable, str(timing_out), "submit"]
        timing_out_submitter = Process("submit", argv, env=prefect_server.env, echo=False)
        processes.append(timing_out_submitter)
        crashing = prefect_server.spawn(serve_with_status)
        processes.append(crashing)
        task_server.wait_for_line(rf"^status endpoint: http://127\.0\.0\.1:{port}/status$", 60)
        wait_until_subscribed(prefect_server.api_url, task_server)
        wait_until_subscribed(prefect_server.api_url, timing_out_server)
        events.wait_for_line(r"Subscribing to event stream", timeout=60)
        watcher.wait_for_line(r"^watching for failed runs of import_file$", timeout=60)

        # uvicorn starts beside the subscription: wait until the endpoint answers too.
        deadline = time.monotonic() + 240
        while True:
            try:
                before = status(port)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the status endpoint never answered"
                time.sleep(0.2)

        # Its run is older than the batch: `prefect task-run ls` must list the batch's alone.
        assert timing_out_submitter.wait(timeout=120) == 0, timing_out_submitter.output
        # It serves import_file until it crashes: it must not take a run of the batch.
        crashing.wait(timeout=120)
        submit = prefect_server.spawn(STEP / "submit.py")
        processes.append(submit)
        busy = []
        while submit.running():
            assert time.monotonic() < deadline, f"submit.py did not finish:\n{submit.output}"
            # The endpoint reads the task server's counters from another thread while they
            # change, so a snapshot can be a moment out of step; an answer other than 200
            # is skipped, not fatal.
            response = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5)
            if response.status_code == 200 and any(response.json()["in_flight"].values()):
                busy.append(response.json())
            time.sleep(0.1)
        assert submit.wait(timeout=10) == 0, submit.output

        # A run's final state reaches the API a moment before the task server counts it.
        while (idle := status(port))["current"] or sum(idle["finished"].values()) < RUNS:
            assert time.monotonic() < deadline, f"the task server still reports {idle}"
            time.sleep(0.1)

        tag = re.search(
            r"^submitted \d+ runs of import_file, tagged (batch-\w+)$", submit.output, re.M
        )
        assert tag, submit.output
        runs = prefect_server.api(
            "POST", "/task_runs/filter", json={"task_runs": {"tags": {"all_": [tag.group(1)]}}}
        )
        histories = {}
        for run in runs:
            states = prefect_server.api(
                "GET", "/task_run_states/", params={"task_run_id": run["id"]}
            )
            histories[run["id"]] = sorted(states, key=lambda s: s["timestamp"])
        yield Batch(
            submit,
            task_server,
            events,
            watcher,
            timing_out_submitter,
            crashing,
            tag.group(1),
            runs,
            histories,
            before,
            busy,
            idle,
        )
    finally:
        # Ctrl+C stops the task server at once; SIGTERM would leave it hanging (NOTES.md says
        # why), and stop() would wait its whole grace period before killing it. Each process
        # takes a second or two to stop: all at once, not one after the other.
        with ThreadPoolExecutor(len(processes) or 1) as pool:
            list(pool.map(lambda process: process.stop(grace=10, sig=signal.SIGINT), processes))


def summary(batch: Batch) -> tuple[dict[str, int], int, float, float]:
    """(count of each final state, runs retried, p50 and max queue wait) as submit.py says."""
    line = re.search(r"^summary: (\d+) runs: (.+), (\d+) retried$", batch.submit.output, re.M)
    waits = re.search(r"^queue wait: p50 ([\d.]+) s, max ([\d.]+) s$", batch.submit.output, re.M)
    assert line and waits, batch.submit.output
    counts = {name: int(n) for n, name in re.findall(r"(\d+) (\w+)", line[2])}
    assert sum(counts.values()) == int(line[1])
    return counts, int(line[3]), float(waits[1]), float(waits[2])


def queue_wait(run: dict[str, Any]) -> float:
    """From .delay() to the first Running, read from the API."""
    return (parse_time(run["start_time"]) - parse_time(run["expected_start_time"])).total_seconds()


def test_the_summary_matches_the_api(batch):
    counts, retried, p50, longest = summary(batch)
    names = {run_id: [s["name"] for s in states] for run_id, states in batch.histories.items()}
    final = [run["state"]["name"] for run in batch.runs]
    assert counts == {name: final.count(name) for name in set(final)}
    assert retried == sum("Retrying" in history for history in names.values())
    # The mix tasks.py promises: ids ending in 9 fail for good, ids ending in 4 once.
    assert counts == {"Completed": 18, "Failed": 2} and retried == 4
    for run in batch.runs:
        assert run["flow_run_id"] is None  # background runs belong to no flow run
        # One attempt per Running or Retrying state.
        assert run["run_count"] == sum(n in ("Running", "Retrying") for n in names[run["id"]])

    waits = [queue_wait(run) for run in batch.runs]
    assert p50 == pytest.approx(statistics.median(waits), abs=0.006)
    assert longest == pytest.approx(max(waits), abs=0.006)


def test_submit_prints_the_count_of_each_state_as_it_changes(batch):
    # Prefect's own log lines ("12:00:00.000 | INFO | ...") aside.
    own = [
        line
        for line in batch.submit.output.splitlines()
        if line and not re.match(r"^\d\d:\d\d:\d\d\.\d+ \| ", line)
    ]
    assert own[0] == f"submitted {RUNS} runs of import_file, tagged {batch.tag}"
    assert own[-2].startswith("summary: ") and own[-1].startswith("queue wait: ")
    progress = own[1:-2]
    assert progress[-1] == "18 Completed, 2 Failed", own
    for line in progress:
        assert re.fullmatch(r"\d+ \w+(, \d+ \w+)*", line), line
        assert sum(int(n) for n in re.findall(r"\d+", line)) == RUNS
    # A line only when the counts change.
    assert all(a != b for a, b in itertools.pairwise(progress)), progress


def test_the_status_endpoint_shows_runs_in_flight_then_finished(batch, prefect_server):
    ids = {run["id"] for run in batch.runs}
    (key,) = {run["task_key"] for run in batch.runs}
    assert batch.before["in_flight"] == {key: {}}
    assert batch.before["finished"] == {key: 0}
    assert batch.before["current"] == 0 and batch.before["limit"] == 4

    assert batch.busy, "no status snapshot caught a run in flight"
    for snapshot in batch.busy:
        assert snapshot["limit"] == 4
        assert snapshot["tasks"] == [key]
        in_flight = snapshot["in_flight"][key]
        assert set(in_flight) <= ids
        # A run holds its slot a moment before it is listed, so current can be one ahead.
        assert 0 < len(in_flight) <= snapshot["current"] <= 4
        for run_id, started in in_flight.items():
            # The task server took the run after it was scheduled and before it ended.
            history = batch.histories[run_id]
            assert parse_time(history[0]["timestamp"]) <= parse_time(started)
            assert parse_time(started) <= parse_time(history[-1]["timestamp"])

    assert batch.idle["in_flight"] == {key: {}}
    assert batch.idle["current"] == 0 and batch.idle["available"] == 4
    # "finished" counts runs the task server is done with, failed ones included.
    assert batch.idle["finished"] == {key: RUNS}
    assert batch.idle["stopping"] is False
    assert batch.idle["client_id"].endswith(f"-{batch.task_server.pid}")


def test_the_cli_lists_inspects_and_shows_the_logs_of_background_runs(batch, prefect_server):
    failed = sorted(run["id"] for run in batch.runs if run["state"]["type"] == "FAILED")
    table, inspected, text = prefect_cli(
        prefect_server,
        ["task-run", "ls", "--task-run-name", "import_file", "--limit", str(RUNS)],
        ["task-run", "inspect", failed[0], "-o", "json"],
        ["task-run", "logs", failed[0]],
    )
    # The newest runs of import_file are the batch's: `ls` lists exactly them, each with the
    # type of its state.
    rows = dict(re.findall(rf"^│ ({UUID}) │ import_file │ import_file │ (\w+) +│", table, re.M))
    assert rows == {run["id"]: run["state"]["type"] for run in batch.runs}, table

    inspected = json.loads(inspected)
    assert inspected["state"]["name"] == "Failed"
    assert inspected["run_count"] == 3
    assert inspected["flow_run_id"] is None
    assert re.fullmatch(
        r"Task run encountered an exception ValueError: file (9|19) is corrupt",
        inspected["state"]["message"],
    )

    assert re.search(r"attempt 1: importing file (9|19)$", text, re.M), text
    assert "Retry 1/2 will start 1 second(s) from now" in text
    assert re.search(r"attempt 3: importing file (9|19)$", text, re.M), text
    assert "Retries are exhausted" in text
    assert "ValueError: file" in text  # the traceback is in the API too


def test_log_prints_go_to_the_task_server_and_to_the_api(batch, prefect_server):
    for run in batch.runs:
        found = logs(prefect_server, run["id"], "attempt 1: importing file")
        text = "\n".join(log["message"] for log in found)
        file_id = int(re.search(r"attempt 1: importing file (\d+)", text).group(1))
        attempts = 3 if file_id in FAILED_FILES else 2 if file_id in FLAKY_FILES else 1
        lines = [f"attempt {n}: importing file {file_id}" for n in range(1, attempts + 1)]
        found = logs(prefect_server, run["id"], *lines)
        messages = [log["message"] for log in found]
        for line in lines:
            assert line in messages
            # The same print in the task server's terminal, behind the run's name.
            assert f"Task run 'import_file' - {line}" in batch.task_server.output
        assert all(log["task_run_id"] == run["id"] for log in found)
        assert all(log["flow_run_id"] is None for log in found)
    # The submitter only submitted: no task body ran in it.
    assert "importing file" not in batch.submit.output


def test_the_event_stream_shows_every_state_change(batch):
    for run_id, history in batch.histories.items():
        for state in history:
            batch.events.wait_for_line(
                rf"prefect\.task-run\.{state['name']} prefect\.task-run\.{run_id}$", timeout=30
            )


def test_watch_failures_prints_each_failed_run_of_the_batch(batch):
    failed = {run["id"]: run for run in batch.runs if run["state"]["type"] == "FAILED"}
    for run_id, run in failed.items():
        batch.watcher.wait_for_line(
            rf"^\d\d:\d\d:\d\d prefect\.task-run\.{run_id} Failed \['{batch.tag}'\]:"
            rf" {re.escape(run['state']['message'])}$",
            timeout=30,
        )
    # Only failures: no other run of the batch shows up. (Connecting replays the last
    # minute's events, so failures of an earlier batch may show up too.)
    seen = set(re.findall(rf"prefect\.task-run\.({UUID}) .*'{batch.tag}'", batch.watcher.output))
    assert seen == set(failed)


def test_serve_with_a_status_port_crashes_in_prefect_3_9_1(batch):
    """Why task_server.py calls aserve in its own event loop instead of serve()."""
    assert batch.crashing.wait(timeout=120) != 0
    assert "Cannot call `APILogWorker.flush` from the global event loop" in batch.crashing.output


def test_watch_failures_also_sees_runs_that_time_out(batch, prefect_server):
    """A timed-out run's event is prefect.task-run.TimedOut, not .Failed: the watcher filters
    on the state's type, FAILED, and so sees it."""
    assert batch.timing_out.wait(timeout=120) == 0, batch.timing_out.output
    run_id = batch.timing_out.wait_for_line(rf"^submitted ({UUID})$", timeout=10).group(1)

    batch.watcher.wait_for_line(
        rf"prefect\.task-run\.{run_id} TimedOut \[\]: Task run exceeded timeout of 1\.0 second",
        timeout=60,
    )

    # The server stores events a few seconds after it streams them.
    def stored_events() -> set[str]:
        resource = {"resource": {"id": [f"prefect.task-run.{run_id}"]}}
        events = prefect_server.api("POST", "/events/filter", json={"filter": resource})
        return {event["event"] for event in events["events"]}

    names = wait_for(
        stored_events,
        lambda names: "prefect.task-run.TimedOut" in names,
        timeout=60,
        interval=0.5,
        what="a stored TimedOut event",
    )
    assert "prefect.task-run.Failed" not in names
    assert prefect_server.task_run(run_id)["state"]["type"] == "FAILED"
