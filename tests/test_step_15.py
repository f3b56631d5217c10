"""Step 15: DELETE /jobs/{id} cancels a job. Prefect stops no background run itself: the app
marks the run Cancelling, the task stops at its next checkpoint, and the job reads "cancelled"
only once it has stopped. A job that ends before its cancel lands reads as it ended."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

import pytest
from harness import FlakyApi, end_run, step_dir, step_tasks, wait_for
from prefect import task
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from test_step_08 import KEYS, app_env, as_client, poll_job, post_job

from tutorial.runner import wait_until_answering

STEP = step_dir(15)
REPORT = {"title": "Report", "text": "The year went well. " * 10}  # ten 1 s pieces of work
NOTE = {"title": "Note", "text": "A short note."}  # one


@pytest.fixture(scope="module")
def app(prefect_server, tmp_path_factory):
    """Step 15's app (step 08's, loaded as it is), shared by the module's tests. Each test
    starts the step's task server (one job at a time) when it needs one."""
    api, url = prefect_server.spawn_api(STEP, **app_env(tmp_path_factory.mktemp("step-15")))
    try:
        wait_until_answering(f"{url}/health", api)
        yield url
    finally:
        api.stop()


def seconds(state: dict) -> float:
    return datetime.fromisoformat(state["timestamp"]).timestamp()


def states(prefect_server, run_id: str) -> list[dict]:
    found = prefect_server.api("GET", "/task_run_states/", params={"task_run_id": run_id})
    return sorted(found, key=lambda state: state["timestamp"])


def names(history: list[dict]) -> list[str]:
    return [state["name"] for state in history]


def did_no_work(history: list[dict]) -> bool:
    """Each piece of the task's work takes 1 s: a run that did any was Running for 1 s."""
    running, cancelled = history[-2], history[-1]
    assert (running["name"], cancelled["name"]) == ("Running", "Cancelled"), names(history)
    return seconds(cancelled) - seconds(running) < 1


def runs_of(prefect_server, client: str, since: datetime) -> list[dict]:
    """The client's runs created since then: other tests on the session's server (step 08's)
    submit as the same client."""
    runs = {"tags": {"all_": [f"client:{client}"]}}
    runs["expected_start_time"] = {"after_": since.isoformat()}
    return prefect_server.api("POST", "/task_runs/filter", json={"task_runs": runs})


def test_submit_py_cancels_a_queued_job_and_a_running_one(prefect_server, app, task_server):
    task_server(STEP / "task_server.py")
    since = datetime.now(UTC)
    submit = prefect_server.run_script(STEP / "submit.py", API_URL=app, JOBS_API_KEY=KEYS["bob"])

    assert submit.code == 0, submit.output
    lines = [line for line in submit.output.splitlines() if not line.startswith(" ")]
    assert lines == [
        "Report A: running, Report B: queued",
        "DELETE Report B: 202 cancelling",
        "DELETE Report A: 202 cancelling",
        "Report A: cancelled",
        "Report B: cancelled",
        "Note: completed",
        "DELETE Note: 409 the job has already completed",
    ], submit.output

    # What Prefect holds for bob's three runs.
    runs = runs_of(prefect_server, "bob", since)
    histories = [states(prefect_server, run["id"]) for run in runs]
    by_shape = {tuple(names(history)): history for history in histories}
    # Report A: cancelled while running, stopped at its next checkpoint, long before its ten
    # seconds of work. The app reads Pending as running too, so the DELETE may land before
    # the task server records Running: both orders are the same lesson.
    a_shapes = [
        ("Scheduled", "Pending", "Running", "Cancelling", "Cancelled"),
        ("Scheduled", "Pending", "Cancelling", "Running", "Cancelled"),
    ]
    report_a = [shape for shape in by_shape if shape in a_shapes]
    assert len(report_a) == 1, sorted(by_shape)
    assert sorted(by_shape) == sorted(
        [
            report_a[0],
            # Report B: cancelled in the queue. Prefect still handed it to the task server,
            # which ran it; the task's first checkpoint stopped it before any work.
            ("Scheduled", "Cancelling", "Pending", "Running", "Cancelled"),
            ("Scheduled", "Pending", "Running", "Completed"),  # the note
        ]
    )
    history_a = by_shape[report_a[0]]
    assert seconds(history_a[-1]) - seconds(history_a[1]) < 5
    assert did_no_work(by_shape["Scheduled", "Cancelling", "Pending", "Running", "Cancelled"])


def test_a_job_cancelled_in_the_queue_reads_cancelling_until_a_task_server_stops_it(
    prefect_server, app, task_server
):
    with as_client(app, "alice") as alice:
        job_id = post_job(alice, REPORT).json()["id"]
        # No task server yet: the run waits in the queue.
        cancelled = alice.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json() == {
            "id": job_id,
            "status": "cancelling",
            "result": None,
            "error": None,
        }
        # Not "cancelled": the run is still in Prefect's queue and will be handed out.
        assert alice.get(f"/jobs/{job_id}").json()["status"] == "cancelling"
        assert prefect_server.state_type(job_id) == "CANCELLING"
        again = alice.delete(f"/jobs/{job_id}")  # a client's retry: the same answer
        assert (again.status_code, again.json()["status"]) == (202, "cancelling")

        task_server(STEP / "task_server.py")
        answers = poll_job(alice, f"/jobs/{job_id}")
        # Never "running", though the task server did run it: it stopped at once.
        assert {answer["status"] for answer in answers} <= {"cancelling", "cancelled"}
        assert answers[-1] == {"id": job_id, "status": "cancelled", "result": None, "error": None}
        late = alice.delete(f"/jobs/{job_id}")  # cancelling a cancelled job: done already
        assert (late.status_code, late.json()["status"]) == (202, "cancelled")

    history = states(prefect_server, job_id)
    assert names(history)[:2] == ["Scheduled", "Cancelling"]
    assert names(history)[-3:] == ["Pending", "Running", "Cancelled"]
    assert did_no_work(history)


def test_a_cancelled_job_taken_again_after_a_requeue_reads_cancelling(prefect_server, app):
    """Step 11's reconciler re-queues a run whose task server died: a new Scheduled state, then
    another task server's Pending and Running. A Cancelling before the re-queue still stops
    the task at its first checkpoint (it reads the whole history), so the job reads
    "cancelling", not "running", while it is taken again."""
    with as_client(app, "alice") as alice:
        job_id = post_job(alice, REPORT).json()["id"]
        assert alice.delete(f"/jobs/{job_id}").json()["status"] == "cancelling"
        try:
            # The states a re-queue and a new task server record, written as they write them.
            for state in ("SCHEDULED", "PENDING", "RUNNING"):
                end_run(prefect_server, job_id, state)
            assert alice.get(f"/jobs/{job_id}").json()["status"] == "cancelling"
        finally:
            end_run(prefect_server, job_id, "CANCELLED")
        assert alice.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_only_the_jobs_client_can_cancel_it(prefect_server, app):
    with as_client(app, "alice") as alice, as_client(app, "bob") as bob:
        job_id = post_job(alice, NOTE).json()["id"]
        for unknown in (job_id, str(uuid.uuid4())):
            response = bob.delete(f"/jobs/{unknown}")
            assert response.status_code == 404, response.text
            assert response.json() == {"detail": "job not found"}
        malformed = bob.delete("/jobs/not-a-job")
        assert malformed.status_code == 422
        assert "valid UUID" in malformed.json()["detail"][0]["msg"]
        # Bob's attempts changed nothing.
        assert prefect_server.state_type(job_id) == "SCHEDULED"
        assert alice.delete(f"/jobs/{job_id}").json()["status"] == "cancelling"


def test_a_job_that_ended_cannot_be_cancelled(prefect_server, app, task_server):
    task_server(STEP / "task_server.py")
    german = {"title": "Hinweis", "text": "Die neue Version ist schneller."}
    with as_client(app, "alice") as alice:
        done = {
            post_job(alice, NOTE).json()["id"]: "completed",
            post_job(alice, german).json()["id"]: "failed",
        }
        for job_id, status in done.items():
            before = poll_job(alice, f"/jobs/{job_id}")[-1]
            assert before["status"] == status
            history = names(states(prefect_server, job_id))

            response = alice.delete(f"/jobs/{job_id}")
            assert response.status_code == 409, response.text
            assert response.json() == {"detail": f"the job has already {status}"}
            # Prefect refused the Cancelling state: the run and the job are as they were.
            assert names(states(prefect_server, job_id)) == history
            assert alice.get(f"/jobs/{job_id}").json() == before


def test_a_job_that_ends_before_its_cancel_is_recorded_reads_as_it_ended(
    prefect_server, app, task_server
):
    """A task server reports each state as an event, which the Prefect server records a
    moment later. A DELETE in that moment sees a running job, and Prefect accepts the
    Cancelling state; the Completed state, older, is then recorded in the run's history but
    not as its current state. The job must read "completed" with its result, not
    "cancelling" forever. Here the moment is held open: the run's Completed state cannot
    be written until the block ends."""
    task_server(STEP / "task_server.py")
    held_back = (
        "NEW.type = 'COMPLETED' AND NEW.task_run_id IN"
        " (SELECT id FROM task_run WHERE tags LIKE '%client:bob%')"
    )
    with as_client(app, "bob") as bob:
        with prefect_server.states_held_back(held_back):
            job_id = post_job(bob, NOTE).json()["id"]
            wait_for(
                lambda: prefect_server.task_run(job_id),
                lambda run: run["state_type"] == "COMPLETED",
                timeout=60,
                what="the task server to report the job Completed",
            )
            response = bob.delete(f"/jobs/{job_id}")
            assert (response.status_code, response.json()["status"]) == (202, "cancelling")

        answers = poll_job(bob, f"/jobs/{job_id}")
    assert answers[-1]["status"] == "completed", answers
    assert answers[-1]["result"]["title"] == "Note"
    # Prefect's own view: the current state is still Cancelling, the end is in the history.
    assert prefect_server.state_type(job_id) == "CANCELLING"
    assert names(states(prefect_server, job_id))[-2:] == ["Completed", "Cancelling"]


def test_the_lesson_shows_step_08s_code(prefect_server):
    """The step's api.py and tasks.py load step 08's files: nothing here is a copy."""
    for name in ("api.py", "tasks.py"):
        text = (STEP / name).read_text()
        assert f'"08_fastapi_jobs" / "{name}"' in text
        assert not re.search(r"^(async )?def ", text, re.M)


API = {}  # the FlakyApi the task below reaches the Prefect server through


@task
def checkpoint_while_the_api_is(mode: str) -> tuple[bool, float]:
    """Step 08's checkpoint, asked from inside a real task run while the API hangs or is down."""
    with step_tasks(step_dir(8)) as tasks:
        API["proxy"].set(mode)
        began = time.monotonic()
        try:
            return tasks.cancel_requested(), time.monotonic() - began
        finally:
            API["proxy"].set("up")  # so that the run can report its end


def test_the_checkpoint_goes_on_when_the_api_hangs_or_is_down(prefect_server, client_settings):
    """A checkpoint that cannot reach the API must neither fail the job nor stall it: it
    answers "not cancelled" after one short try, and the next checkpoint asks again. Prefect's
    client alone waits 60 s a try and retries, then raises into the task."""
    API["proxy"] = proxy = FlakyApi(prefect_server.api_url)
    try:
        with temporary_settings({PREFECT_API_URL: proxy.url}):
            for mode in ("hang", "down"):
                cancelled, took = checkpoint_while_the_api_is(mode)
                assert cancelled is False, mode
                assert took < 20, f"the checkpoint took {took:.0f} s while the API was {mode}"
    finally:
        # A process sends its events through one EventsWorker, bound to the API URL it first
        # saw: stop it, or later tests in this process would send theirs to the closed proxy
        # (a run in a flow then never has its states recorded).
        EventsWorker.drain_all(timeout=30, at_exit=False)
        proxy.close()
