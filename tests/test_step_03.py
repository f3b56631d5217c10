"""Step 03: fan-out to two task servers, each running at most `limit` runs at once."""

from __future__ import annotations

import os
import re
import socket
import time
from datetime import datetime

from harness import UUID, load_module, most_at_once, step_dir, step_tasks

from tutorial.runner import wait_until_subscribed

STEP = step_dir(3)
LIMITS = {"task_server.py": 3, "task_server_small.py": 2}


def server_id(process) -> str:
    """How the Prefect API names a task server, and what the task returns."""
    return f"{socket.gethostname()}-{process.pid}"


def wait_until_final(prefect_server, run_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A run reads with no state for a moment while the server writes a new one (step 02).
        states = [(prefect_server.task_run(i)["state"] or {}).get("type") for i in run_ids]
        if all(s in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} for s in states):
            return
        time.sleep(0.5)
    raise TimeoutError(f"runs not final within {timeout} s: {states}")


def test_the_limits_are_in_the_files():
    for name, limit in LIMITS.items():
        assert f"serve(resize_image, limit={limit})" in (STEP / name).read_text()


def span_of(run: dict) -> tuple[float, float]:
    """When a run started and ended (Running, then its final state), as the API records it."""
    return (
        datetime.fromisoformat(run["start_time"]).timestamp(),
        datetime.fromisoformat(run["end_time"]).timestamp(),
    )


def test_two_task_servers_share_the_runs_within_their_limits(prefect_server, spawn, task_server):
    # The runs are queued before the task servers start, so that both fill up at once, however
    # slowly a busy machine submits; the lesson starts the task servers first.
    submit = spawn(STEP / "submit.py")
    submit.wait_for_line(r"^submitted 12 runs$", timeout=240)
    servers = dict(zip(LIMITS, [spawn(STEP / name) for name in LIMITS], strict=True))
    for process in servers.values():
        wait_until_subscribed(prefect_server.api_url, process)
    limit_of = {server_id(p): LIMITS[name] for name, p in servers.items()}

    assert submit.wait(timeout=240) == 0, submit.output
    printed = re.findall(rf"^(\S+) +ran on (\S+)  \(run ({UUID})\)$", submit.output, re.M)
    assert sorted(image for image, _, _ in printed) == sorted(
        [f"photo-{i}.jpg" for i in range(6)] + [f"scan-{i}.png" for i in range(6)]
    )

    # Who ran each run, from its result in the API and the task servers' logs; when, from the
    # run's start and end times in the API.
    spans: dict[str, list[tuple[float, float]]] = {sid: [] for sid in limit_of}
    with step_tasks(STEP) as tasks:
        for image, printed_server, run_id in printed:
            run = prefect_server.task_run(run_id)
            assert run["state"]["type"] == "COMPLETED"
            resized = prefect_server.result(run_id)
            assert isinstance(resized, tasks.Resized)
            assert (resized.image, resized.server) == (image, printed_server)
            assert resized.server in limit_of, f"ran on an unknown process: {resized.server}"
            spans[resized.server].append(span_of(run))
            # The task server that logged receiving the run is the one that ran it.
            (name,) = [n for n, p in servers.items() if server_id(p) == resized.server]
            assert f"Received task run: {run_id}" in servers[name].output

    assert all(spans.values()), f"a task server got no work: {spans}"
    for sid, runs in spans.items():
        assert f"{sid}: {len(runs)} runs" in submit.output.splitlines()
    most = {sid: most_at_once(runs) for sid, runs in spans.items()}
    assert all(most[sid] <= limit_of[sid] for sid in most), (most, limit_of)
    assert any(most[sid] == limit_of[sid] for sid in most), (most, limit_of)


HOLD_TASKS = """\
import os
import time

from prefect import task


@task
def hold(i: int, release: str) -> int:
    while not os.path.exists(release):  # until the test lets the run go
        time.sleep(0.05)
    return i
"""
HOLD_SERVER = """\
from prefect.task_worker import serve

from hold_tasks import hold

if __name__ == "__main__":
    serve(hold, limit=1)
"""


def test_a_busy_task_server_keeps_runs_an_idle_one_could_take(
    prefect_server, task_server, tmp_path
):
    """With limit=1 and a backlog, a task server takes limit + 2 runs: one runs, one waits in
    the process for the slot, one waits unread on its websocket. A second task server that
    subscribes while the first run holds gets a run submitted after it, never the third,
    though it sits idle."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    (tmp_path / "hold_tasks.py").write_text(HOLD_TASKS)
    (tmp_path / "hold_server.py").write_text(HOLD_SERVER)
    hold = load_module(tmp_path / "hold_tasks.py").hold
    release = str(tmp_path / "release")
    settings = {PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}
    with temporary_settings(settings):
        run_ids = [str(hold.delay(i, release).task_run_id) for i in range(3)]

        busy = task_server(tmp_path / "hold_server.py")
        busy.wait_for_line(rf"Received task run: {run_ids[1]}", timeout=120)
        idle = task_server(tmp_path / "hold_server.py")
        # The queue is first in, first out: a run submitted now reaches the idle task server
        # only after the third, had the third still been in the queue.
        run_ids.append(str(hold.delay(3, release).task_run_id))
        idle.wait_for_line(rf"Received task run: {run_ids[3]}", timeout=120)
    assert f"Received task run: {run_ids[2]}" not in idle.output
    assert prefect_server.task_run(run_ids[2])["state"]["name"] == "Scheduled"

    (tmp_path / "release").touch()
    wait_until_final(prefect_server, run_ids, timeout=120)
    assert all(f"Received task run: {run_id}" in busy.output for run_id in run_ids[:3])
    assert re.findall(r"Received task run: (\S+)", idle.output) == [run_ids[3]]
    # Received: the first two before the first run finished, the third only after it.
    lines = busy.output.splitlines()

    def position(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    first_finished = position(r"Finished in state Completed")
    assert position(f"Received task run: {run_ids[1]}") < first_finished
    assert position(f"Received task run: {run_ids[2]}") > first_finished


SPAN_TASKS = """\
import time
from pathlib import Path

from prefect import task


@task
def span(i: int, started_dir: str, threads: int) -> tuple[float, float]:
    started = time.time()
    (Path(started_dir) / str(i)).touch()
    # Held until as many runs have started as the pool has threads (60 s at most), however
    # slowly a busy machine starts them: with that cap they all run at once; without it,
    # the runs beyond it join them.
    while len(list(Path(started_dir).iterdir())) < threads and time.time() - started < 60:
        time.sleep(0.05)
    time.sleep(1)
    return started, time.time()
"""
UNLIMITED_SERVER = """\
from prefect.task_worker import serve

from span_tasks import span

if __name__ == "__main__":
    serve(span, limit=None)
"""


def test_limit_none_still_caps_sync_tasks_at_the_thread_pool_size(
    prefect_server, task_server, tmp_path
):
    """limit=None removes the task server's own cap, but sync tasks run in a
    ThreadPoolExecutor created with max_workers=None: Python's default size,
    min(32, CPU cores + 4). Runs beyond it wait for a thread."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    cores = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    pool_size = min(32, cores + 4)
    (tmp_path / "span_tasks.py").write_text(SPAN_TASKS)
    (tmp_path / "unlimited_server.py").write_text(UNLIMITED_SERVER)
    span_tasks = load_module(tmp_path / "span_tasks.py")
    settings = {PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}
    # Queued before the task server starts, so that all of them arrive at once.
    with temporary_settings(settings):
        started_dir = tmp_path / "started"
        started_dir.mkdir()
        run_ids = [
            str(span_tasks.span.delay(i, str(started_dir), pool_size).task_run_id)
            for i in range(pool_size + 2)
        ]

    task_server(tmp_path / "unlimited_server.py")

    wait_until_final(prefect_server, run_ids, timeout=120)
    spans = [tuple(prefect_server.result(run_id)) for run_id in run_ids]
    assert most_at_once(spans) == pool_size
