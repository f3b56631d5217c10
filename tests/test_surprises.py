"""Prefect behaviours the lessons warn about that no step's tests pin otherwise (see
tutorial/SURPRISES.md). Each test fails the day Prefect changes the behaviour."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from harness import PrefectServer, end_run, step_dir, step_tasks, wait_for
from prefect import tags

from tutorial.runner import wait_until_subscribed
from tutorial.waiting import result_of

HERE = Path(__file__).parent


def run_logs(server: PrefectServer, run_id: str) -> list[str]:
    body = {"logs": {"task_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    return [log["message"] for log in server.api("POST", "/logs/filter", json=body)]


def test_log_prints_loses_the_prints_of_a_run_that_outlives_another(
    prefect_server, client_settings, task_server
):
    """log_prints swaps the built-in print for the duration of a run and puts back what it
    found when the run ends: when a run ends while one that started after it still runs, that
    run's later prints go to the terminal only, not to its logs in the API."""
    from pinned_tasks import shout

    tag = uuid.uuid4().hex[:6]
    task_server(HERE / "pinned_task_server.py", TASKS="shout")
    short = shout.delay(f"short-{tag}", 8)
    # The long run starts second (two runs delivered together may start in either
    # order), while the short one runs, and ends after it. 8 s leaves a busy machine
    # time to deliver and start the long one before the short one ends.
    wait_for(
        lambda: prefect_server.state_type(str(short.task_run_id)),
        lambda state: state == "RUNNING",
        what="the short run running",
    )
    long = shout.delay(f"long-{tag}", 12)
    result_of(short, timeout=120)
    result_of(long, timeout=120)
    short_run = prefect_server.task_run(str(short.task_run_id))
    long_run = prefect_server.task_run(str(long.task_run_id))
    assert short_run["end_time"] < long_run["end_time"]
    assert long_run["start_time"] < short_run["end_time"], "they did not overlap"

    long_logs = wait_for(
        lambda: run_logs(prefect_server, str(long.task_run_id)),
        lambda logs: f"long-{tag} is done" in logs,
        what="the long run's logger line never reached the API",
    )
    assert f"long-{tag} starts" in long_logs
    assert f"long-{tag} ends" not in long_logs, "Prefect kept the print: the surprise is gone"
    short_logs = run_logs(prefect_server, str(short.task_run_id))
    assert f"short-{tag} starts" in short_logs and f"short-{tag} ends" in short_logs


def test_a_cancelled_background_run_still_runs_to_completion(
    prefect_server, client_settings, task_server
):
    """Task servers never watch for cancellation: a run set Cancelled while it waits in the
    queue is delivered and run all the same, and a running one set Cancelling runs to its end.
    Both end Completed, over the state the API accepted."""

    def state_of(future) -> str | None:
        return prefect_server.state_type(str(future.task_run_id))

    def set_state(run_id: str, state_type: str) -> None:
        body = {"state": {"type": state_type}, "force": True}
        answer = prefect_server.api("POST", f"/task_runs/{run_id}/set_state", json=body)
        assert answer["status"] == "ACCEPT", answer

    from pinned_tasks import nap

    queued = nap.delay(1)  # nobody serves nap yet: it waits in the queue
    set_state(str(queued.task_run_id), "CANCELLED")
    task_server(HERE / "pinned_task_server.py", TASKS="nap")
    # Cancelled is a final state: wait for the one after it, not for any final state.
    wait_for(lambda: state_of(queued) == "COMPLETED", timeout=120, what="not run")
    assert result_of(queued, timeout=120) == "finished"

    running = nap.delay(4)
    wait_for(lambda: state_of(running) == "RUNNING", timeout=120, what="never started")
    set_state(str(running.task_run_id), "CANCELLING")
    assert result_of(running, timeout=120) == "finished"

    assert prefect_server.state_names(str(queued.task_run_id)) == [
        *("Scheduled", "Cancelled", "Pending", "Running", "Completed")
    ]
    assert prefect_server.state_names(str(running.task_run_id))[-3:] == [
        *("Running", "Cancelling", "Completed")
    ]


# What every lesson's task_server.py ran before it ran aserve on a loop of its own.
SYNC_SERVE = """from prefect.task_worker import serve

from tasks import send_welcome_email

if __name__ == "__main__":
    serve(send_welcome_email)
"""


@pytest.mark.parametrize("server", ["serve()", "lesson"])
def test_serve_freezes_when_a_run_arrives_while_a_tagged_run_starts(
    prefect_server, client_settings, started, tmp_path, server
):
    """serve() runs the task worker on Prefect's global loop. A tagged run's engine thread
    that creates the concurrency service of its tags holds the lock of all Prefect services and
    waits for that loop; a run that arrives meanwhile makes the loop emit its Pending event,
    which waits for the lock. Both wait for ever: the task server runs nothing more. The
    lessons' task server (aserve on a loop of its own) carries on. The race is made wide
    (tests/widened_window.py); unwidened it froze 3 of 9 benchmark runs."""
    step = step_dir(1)
    script = step / "task_server.py"
    if server == "serve()":
        script = tmp_path / "task_server.py"
        script.write_text(SYNC_SERVE)
    process = prefect_server.spawn(HERE / "widened_window.py", str(script), PYTHONPATH=str(step))
    started.append(process)
    wait_until_subscribed(prefect_server.api_url, process)
    tag = uuid.uuid4().hex[:6]
    with step_tasks(step) as tasks:
        with tags(f"first-{tag}"):
            first = str(tasks.send_welcome_email.delay(f"first-{tag}@example.com").task_run_id)
        process.wait_for_line(r"^widened: holding", timeout=120)
        with tags(f"second-{tag}"):
            second = str(tasks.send_welcome_email.delay(f"second-{tag}@example.com").task_run_id)
    runs = [first, second]
    try:
        if server == "serve()":
            process.wait_for_line(r"^watchdog: the global loop has not answered", timeout=120)
            assert [prefect_server.state_type(run) for run in runs].count("COMPLETED") == 0
        else:
            wait_for(
                lambda: [prefect_server.state_type(run) for run in runs],
                lambda states: states == ["COMPLETED", "COMPLETED"],
                timeout=120,
                what="the lesson's task server did not finish both runs",
            )
            assert "watchdog" not in process.output, process.output
    finally:
        for run in runs:
            if prefect_server.state_type(run) != "COMPLETED":
                end_run(prefect_server, run)


def test_sqlite_answers_writes_at_the_same_moment_with_503_and_keeps_none_of_them(tmp_path):
    """Task runs created 16 at a time on a server of its own: SQLite takes one write at a time,
    the others fail "database is locked" and are answered 503 after a rollback. So a 503 wrote
    nothing, and sending it again (as Prefect's client does) creates each run exactly once."""
    tag = uuid.uuid4().hex

    def body() -> dict:
        return {
            "name": "burst",
            "task_key": f"burst-{tag}",
            "dynamic_key": str(uuid.uuid4()),
            "state": {"type": "SCHEDULED"},
            "tags": [tag],
        }

    def count(server: PrefectServer) -> int:
        return server.api("POST", "/task_runs/count", json={"task_runs": {"tags": {"all_": [tag]}}})

    with PrefectServer.start(tmp_path) as server:
        url = f"{server.api_url}/task_runs/"
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
            sent: list[tuple[dict, int]] = []
            # A busy machine may serialise a round by chance: a few rounds, until a 503.
            for _ in range(10):
                bodies = [body() for _ in range(16)]
                codes = pool.map(lambda b: client.post(url, json=b).status_code, bodies)
                sent += zip(bodies, codes, strict=True)
                if any(code == 503 for _, code in sent):
                    break
        assert {code for _, code in sent} == {201, 503}, [code for _, code in sent]
        assert count(server) == sum(code == 201 for _, code in sent)

        for b, code in sent:
            if code == 503:
                assert server.request("POST", "/task_runs/", json=b).status_code == 201
        assert count(server) == len(sent)
