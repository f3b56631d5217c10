"""Step 13: the same job with Celery, arq and Prefect gives the same thumbnails, each after
one retry; and what Prefect's submit API does not have, pinned so the lesson stays true."""

from __future__ import annotations

import inspect
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import UUID, clean_env, load_module, step_dir, wait_for

from tutorial.runner import Process, free_port

STEP = step_dir(13)
BIN = Path(sys.executable).parent
RESULT_LINE = re.compile(r"^photo-\d\.pgm: .*$", re.M)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway Redis on a free loopback port: no disk, gone at the end of the module."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    redis = Process("redis", argv, env=clean_env(), echo=False)
    try:
        redis.wait_for_line(r"Ready to accept connections", timeout=30)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        redis.stop()


def start_worker(started: list[Process], label: str, argv: list[str], redis_url: str) -> Process:
    """A Celery or arq worker, started from the repo root with the step's folder importable."""
    env = clean_env(PYTHONPATH=str(STEP), REDIS_URL=redis_url)
    started.append(worker := Process(label, argv, env=env, echo=False))
    return worker


def completed_task_runs(prefect_server, flow_run_id: str) -> list[dict]:
    """The flow run's four task runs, once all are Completed. Their final states reach the API
    as events, so they can land after the flow run's own Completed."""
    return wait_for(
        lambda: prefect_server.api(
            "POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}
        ),
        lambda runs: (
            len(runs) == 4 and all(r["state"] and r["state"]["type"] == "COMPLETED" for r in runs)
        ),
        timeout=60,
        interval=0.5,
        what="the flow run's four task runs, Completed",
    )


def wait_for_lines(process: Process, pattern: str, count: int, timeout: float = 10) -> None:
    """Wait until exactly `count` output lines match: the log may trail the results a little."""
    found = wait_for(
        lambda: re.findall(pattern, process.output),
        lambda found: len(found) >= count,
        timeout,
        interval=0.1,
        what=f"{process.label}: {count} lines matching {pattern!r}",
    )
    assert len(found) == count, f"{process.label}: {pattern!r}:\n{process.output}"


def expected_thumbnails() -> list[dict]:
    """What the job must return for photo-1 to photo-8, computed here, directly, on the
    second attempt (the first one fails to store the thumbnail, by design)."""
    thumbnails = load_module(STEP / "thumbnails.py")
    return [
        thumbnails.create_thumbnail(f"photo-{n}.pgm", thumbnails.sample_upload(seed=n), attempt=2)
        for n in range(1, 9)
    ]


def expected_lines() -> list[str]:
    """What each submitter must print for the eight thumbnails."""
    return [
        f"{t['name']}: {t['size']}, sha256 {t['sha256'][:16]}, {t['stored_at']}, attempt 2"
        for t in expected_thumbnails()
    ]


def test_the_same_job_three_ways_and_as_a_flow(
    prefect_server, task_server, spawn, started, redis_url
):
    celery = start_worker(
        started,
        "celery",
        [str(BIN / "celery"), "-A", "celery_app", "worker", "-c", "4", "--loglevel=INFO"],
        redis_url,
    )
    arq = start_worker(started, "arq", [str(BIN / "arq"), "arq_app.WorkerSettings"], redis_url)
    server = task_server(STEP / "task_server.py")
    celery.wait_for_line(r"celery@\S+ ready\.", timeout=60)
    arq.wait_for_line(r"Starting worker for 1 functions: make_thumbnail", timeout=60)

    # The three submitters and the flow run side by side; each waits for its own results.
    submitters = {
        "prefect": spawn(STEP / "submit.py"),
        "celery": spawn(STEP / "submit_celery.py", REDIS_URL=redis_url),
        "arq": spawn(STEP / "submit_arq.py", REDIS_URL=redis_url),
    }
    canvas = spawn(STEP / "canvas.py")
    for name, submit in [*submitters.items(), ("canvas", canvas)]:
        assert submit.wait(timeout=120) == 0, f"{name}:\n{submit.output}"

    expected = expected_lines()
    assert len(set(expected)) == 8  # eight different thumbnails
    for name, submit in submitters.items():
        assert RESULT_LINE.findall(submit.output) == expected, f"{name}:\n{submit.output}"

    # Each version retried every job once: the workers' own logs say so.
    wait_for_lines(celery, r"make_thumbnail\[.*\] retry: Retry in \d+s: ConnectionError", 8)
    wait_for_lines(celery, r"make_thumbnail\[.*\] succeeded in", 8)
    wait_for_lines(arq, r"make_thumbnail retrying job in \d", 8)
    wait_for_lines(arq, r"make_thumbnail\(.*\) try=2\b", 8)

    # Prefect kept a record of each run: its state history, attempts and result.
    prefect_output = submitters["prefect"].output
    run_ids = re.findall(rf"View it in the UI at '.*/runs/task-run/({UUID})'", prefect_output)
    assert len(run_ids) == 8
    for run_id, thumbnail in zip(run_ids, expected_thumbnails(), strict=True):
        run = prefect_server.task_run(run_id)
        assert run["state"]["type"] == "COMPLETED"
        assert run["run_count"] == 2
        assert prefect_server.state_names(run_id) == [
            *("Scheduled", "Pending", "Running", "AwaitingRetry", "Retrying", "Completed")
        ]
        assert prefect_server.result(run_id) == thumbnail

    # Canvas is a flow: a group of background runs and one task on all their results.
    sheet = ", ".join(f"{t['name']} {t['sha256'][:8]}" for t in expected_thumbnails()[:3])
    assert f"album: {sheet}" in canvas.output.splitlines()
    flow_run_id = re.search(rf"/runs/flow-run/({UUID})", canvas.output).group(1)
    assert prefect_server.api("GET", f"/flow_runs/{flow_run_id}")["state"]["type"] == "COMPLETED"
    runs = completed_task_runs(prefect_server, flow_run_id)
    assert sorted(r["name"].rsplit("-", 1)[0] for r in runs) == [
        *("contact_sheet", "make_thumbnail", "make_thumbnail", "make_thumbnail")
    ]
    # The group's runs belong to the flow run, and the task server ran them.
    for run in runs:
        if run["name"].startswith("make_thumbnail"):
            server.wait_for_line(rf"Received task run: {run['id']}", timeout=10)


def test_prefect_submit_has_no_queue_priority_or_countdown():
    """The lesson says background tasks have no named queues, priorities or countdown/eta:
    nothing in the submit call or in serve() takes one. If Prefect adds them, update the map."""
    from prefect import Task
    from prefect.task_worker import serve

    assert list(inspect.signature(Task.apply_async).parameters) == [
        *("self", "args", "kwargs", "wait_for", "dependencies")
    ]
    assert list(inspect.signature(serve).parameters) == [
        *("tasks", "limit", "status_server_port", "timeout")
    ]


PING = """import time

from prefect import task
from prefect.task_worker import serve


@task
def ping() -> float:
    return time.time()


if __name__ == "__main__":
    serve(ping)
"""


def test_a_future_scheduled_time_does_not_delay_a_background_run(
    prefect_server, task_server, tmp_path
):
    """No countdown by the back door either: a background run created in a Scheduled state
    whose scheduled_time is a minute ahead is queued, and run, at once."""
    script = tmp_path / "ping_server.py"
    script.write_text(PING)
    module = load_module(script)
    task_server(script)

    scheduled_time = datetime.now(UTC) + timedelta(seconds=60)
    state = {"type": "SCHEDULED", "name": "Scheduled"}
    state["state_details"] = {"deferred": True, "scheduled_time": scheduled_time.isoformat()}
    run = prefect_server.api(
        "POST",
        "/task_runs/",
        json={
            "name": "ping",
            "task_key": module.ping.task_key,
            "dynamic_key": f"ping-{uuid.uuid4().hex}",
            "state": state,
        },
    )

    wait_for(
        lambda: prefect_server.task_run(run["id"])["state"],
        lambda state: state and state["type"] == "COMPLETED",
        timeout=30,
        what="the ping run to complete",
    )
    assert prefect_server.result(run["id"]) < scheduled_time.timestamp() - 30


def test_beat_is_a_served_flow_with_a_cron_schedule(prefect_server, task_server, spawn):
    """periodic.py registers a deployment with the nightly schedule and runs its flow runs;
    a run triggered now (as `prefect deployment run` does) completes, its thumbnails made by
    the task server."""
    server = task_server(STEP / "task_server.py")
    periodic = spawn(STEP / "periodic.py")

    (deployment,) = wait_for(
        lambda: prefect_server.api(
            "POST",
            "/deployments/filter",
            json={"deployments": {"name": {"any_": ["nightly-album"]}}},
        ),
        lambda found: len(found) == 1 or not periodic.running(),
        timeout=120,
        interval=0.5,
        what="the deployment nightly-album",
    )
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
    assert all(s["active"] for s in deployment["schedules"])
    assert deployment["parameters"] == {"count": 3}

    flow_run = prefect_server.api(
        "POST", f"/deployments/{deployment['id']}/create_flow_run", json={}
    )
    state = wait_for(
        lambda: prefect_server.api("GET", f"/flow_runs/{flow_run['id']}")["state"],
        lambda s: s["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"},
        timeout=180,
        interval=0.5,
        what="the triggered flow run to finish",
    )
    assert state["type"] == "COMPLETED", f"{periodic.output}\ntask server:\n{server.output}"
    runs = completed_task_runs(prefect_server, flow_run["id"])
    assert sorted(r["name"].rsplit("-", 1)[0] for r in runs) == [
        *("contact_sheet", "make_thumbnail", "make_thumbnail", "make_thumbnail")
    ]
