"""Step 08: a FastAPI app answers at once (202 + Location) and task servers do the slow work;
GET /jobs/{id} reads the run's state from Prefect and shows only this API's runs."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from harness import UUID, step_dir, wait_for
from prefect.client.schemas.objects import StateType

from tutorial.runner import (
    Process,
    free_port,
    wait_until_answering,
    wait_until_subscribed,
)

STEP = step_dir(8)
JOB_TAG = "api:score_document"
FINAL = {"completed", "failed", "cancelled"}
ENGLISH = {
    "title": "Release notes",
    "text": "The new version is faster. It starts in half the time.",
}
GERMAN = {"title": "Versionshinweise", "text": "Die neue Version ist schneller."}


def count_runs(prefect_server, **task_run_filter) -> int:
    body = {"task_runs": task_run_filter} if task_run_filter else {}
    return prefect_server.api("POST", "/task_runs/count", json=body)


# --- the app and its task server ------------------------------------------------------


@pytest.fixture(scope="module")
def app(prefect_server) -> Iterator[str]:
    """The step's task server and app (api.py under uvicorn), started side by side once for
    the tests that only drive them, and stopped after the last one, failed or not. Returns
    the app's base URL."""
    processes = []
    try:
        processes.append(server := prefect_server.spawn(STEP / "task_server.py"))
        api, url = prefect_server.spawn_api(STEP)
        processes.append(api)
        wait_until_subscribed(prefect_server.api_url, server)
        wait_until_answering(f"{url}/health", api)
        yield url
    finally:
        for process in processes:
            process.stop()


def poll_job(client: httpx.Client, location: str, timeout: float = 60) -> list[dict]:
    """GET the job until it is final; every answer, in order."""
    answers = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(location)
        assert response.status_code == 200, response.text
        answers.append(response.json())
        if answers[-1]["status"] in FINAL:
            return answers
        time.sleep(0.2)
    raise AssertionError(f"{location} not final within {timeout} s: {answers[-1]}")


def test_a_job_runs_on_the_task_server_and_its_result_comes_back(prefect_server, app):
    url = app

    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/jobs", json=ENGLISH)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert re.fullmatch(UUID, job_id)
        assert response.headers["Location"] == f"/jobs/{job_id}"
        assert response.json() == {"id": job_id, "status": "queued", "result": None, "error": None}

        answers = poll_job(client, response.headers["Location"])

    statuses = [a["status"] for a in answers]
    # Each poll sees one of these, in this order (a fast run can skip the earlier ones).
    assert statuses == sorted(statuses, key=["queued", "running", "completed"].index)
    assert answers[-1] == {
        "id": job_id,
        "status": "completed",
        "result": {
            "title": "Release notes",
            "words": 11,
            "sentences": 2,
            "reading_ease": answers[-1]["result"]["reading_ease"],
            "reading_time_seconds": 3,
        },
        "error": None,
    }
    assert 60 < answers[-1]["result"]["reading_ease"] < 120  # short plain sentences: easy

    # The job is a background task run like any other, tagged by the API.
    run = prefect_server.task_run(job_id)
    assert run["state"]["type"] == "COMPLETED"
    assert run["tags"] == [JOB_TAG]
    assert run["flow_run_id"] is None
    assert prefect_server.state_names(job_id) == ["Scheduled", "Pending", "Running", "Completed"]
    assert prefect_server.result(job_id) == answers[-1]["result"]


def test_a_failed_job_is_reported_not_raised(prefect_server, app):
    url = app

    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/jobs", json=GERMAN)
        assert response.status_code == 202, response.text
        answers = poll_job(client, response.headers["Location"])

    job_id = response.json()["id"]
    assert answers[-1] == {
        "id": job_id,
        "status": "failed",
        "result": None,
        "error": "Task run encountered an exception ValueError:"
        " 'Versionshinweise' does not look like English text",
    }
    assert prefect_server.task_run(job_id)["state"]["type"] == "FAILED"


def test_a_job_whose_new_state_is_not_written_yet_reports_its_last_one(prefect_server, app):
    """On SQLite the server records a run's new state in two writes; in between, the run
    reads as having no state. read_job then answers with the last state it finds, so a
    running job never reads as queued again. Here the gap is held open: the Completed
    state of this API's runs fails to be written until the block ends."""
    url = app
    held_back = (
        "NEW.type = 'COMPLETED' AND NEW.task_run_id IN"
        f" (SELECT id FROM task_run WHERE tags LIKE '%{JOB_TAG}%')"
    )
    with httpx.Client(base_url=url, timeout=30) as client:
        with prefect_server.states_held_back(held_back):
            response = client.post("/jobs", json=ENGLISH)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            run = wait_for(
                lambda: prefect_server.task_run(job_id),
                lambda run: run["state_type"] == "COMPLETED",
                timeout=60,
                what="the task server to report the job Completed",
            )
            assert run["state"] is None  # the gap: the run points at a state not written

            answer = client.get(f"/jobs/{job_id}")
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "id": job_id,
                "status": "running",
                "result": None,
                "error": None,
            }
        # Once the server writes the state (on its next try), the job is completed.
        answers = poll_job(client, f"/jobs/{job_id}")
    assert answers[-1]["status"] == "completed"
    assert answers[-1]["result"]["words"] == 11


def test_bad_input_is_a_422_and_enqueues_nothing(prefect_server, app):
    url = app
    before = count_runs(prefect_server)

    with httpx.Client(base_url=url, timeout=30) as client:
        cases = [
            ({"title": "No text"}, ["body", "text"], "Field required"),
            ({"title": "", "text": "Hi."}, ["body", "title"], "at least 1 character"),
            ({"title": "A list", "text": ["not", "a", "string"]}, ["body", "text"], "valid string"),
            ({"title": "Big", "text": "a" * 100_001}, ["body", "text"], "at most 100000"),
        ]
        for body, loc, message in cases:
            response = client.post("/jobs", json=body)
            assert response.status_code == 422, (body, response.text)
            (error,) = response.json()["detail"]
            assert error["loc"] == loc and message in error["msg"], error
        response = client.post(
            "/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["type"] == "json_invalid"

        response = client.get("/jobs/not-a-uuid")
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"] == ["path", "job_id"]
        assert error["msg"].startswith("Input should be a valid UUID")

    assert count_runs(prefect_server) == before


OTHER_RUNS = """\
import sys

sys.path.insert(0, {step!r})

from prefect import tags, task

from tasks import Document, score_document


@task
def read_secrets() -> str:
    return "secret"


# Another task's run.
print("other task:", read_secrets.delay().task_run_id)
# Our task, submitted by other code than the API: no tag.
print("untagged:", score_document.delay(Document(title="Payroll", text="Not yours.")).task_run_id)


@task
def score_document(document: Document) -> dict:
    return {{"title": document.title}}  # other code, so another task key


# Submitted through the API by an older version of the task: tagged, but another key.
with tags({tag!r}):
    print("older code:", score_document.delay(Document(title="Old", text="Old.")).task_run_id)
"""


def test_only_this_apis_runs_are_visible(prefect_server, app, tmp_path):
    script = tmp_path / "other_runs.py"
    script.write_text(OTHER_RUNS.format(step=str(STEP), tag=JOB_TAG))
    submit = prefect_server.run_script(script)
    assert submit.code == 0, submit.output
    ids = dict(re.findall(rf"^(.+): ({UUID})$", submit.output, re.M))
    url = app

    with httpx.Client(base_url=url, timeout=30) as client:
        for job_id in (str(uuid.uuid4()), ids["other task"], ids["untagged"]):
            response = client.get(f"/jobs/{job_id}")
            assert response.status_code == 404, response.text
            assert response.json() == {"detail": "job not found"}

        # The tag, not the exact task key, makes a run ours: jobs submitted by the previous
        # deployment stay readable. And GET answers at once for a run nobody will ever pick up
        # (no task server serves that key): it never waits for a result.
        response = client.get(f"/jobs/{ids['older code']}")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "queued"

    older = prefect_server.task_run(ids["older code"])
    assert older["tags"] == [JOB_TAG]
    assert older["task_key"].startswith("score_document-")
    assert older["task_key"] != prefect_server.task_run(ids["untagged"])["task_key"]
    assert "result(" not in (STEP / "api.py").read_text().replace("aresult(", "")


def test_every_prefect_state_type_has_a_status():
    """A state type missing from STATUS would turn GET /jobs/{id} into a 500."""
    mapped = re.findall(r"^    StateType\.(\w+): ", (STEP / "api.py").read_text(), re.M)
    assert sorted(mapped) == sorted(StateType.__members__)


def test_openapi_documents_the_models(app):
    url = app
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()

    schemas = spec["components"]["schemas"]
    assert {"Document", "DocumentScore", "Job", "NotFound"} <= set(schemas)
    assert schemas["Job"]["properties"]["status"]["enum"] == [
        "queued",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]
    assert schemas["Document"]["properties"]["title"]["examples"] == ["Release notes"]
    assert schemas["DocumentScore"]["properties"]["reading_ease"]["description"]

    post = spec["paths"]["/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Document"
    )
    assert "Location" in post["responses"]["202"]["headers"]
    assert post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Job"
    )
    assert "422" in post["responses"]

    get = spec["paths"]["/jobs/{job_id}"]["get"]
    assert get["parameters"][0]["schema"]["format"] == "uuid"
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Job")
    assert get["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/NotFound"
    )


def test_submit_py(prefect_server, app):
    submit = prefect_server.run_script(STEP / "submit.py", API_URL=app)

    assert submit.code == 0, submit.output
    lines = submit.output.splitlines()
    assert "POST /jobs without a text -> 422 text: Field required" in lines
    pattern = rf"^POST /jobs '(.+)' -> 202 Location: /jobs/({UUID})$"
    locations = re.findall(pattern, submit.output, re.M)
    assert [title for title, _ in locations] == [
        "Release notes",
        "Terms of service",
        "Versionshinweise",
    ]
    assert "Release notes: completed" in lines
    assert "Terms of service: completed" in lines
    assert "Versionshinweise: failed" in lines
    assert (
        "  error: Task run encountered an exception ValueError:"
        " 'Versionshinweise' does not look like English text"
    ) in lines
    results = re.findall(r"^  result: \{'title': '(.+?)', 'words': (\d+)", submit.output, re.M)
    assert sorted(results) == [("Release notes", "15"), ("Terms of service", "21")]
    for title, run_id in locations:
        expected = "FAILED" if title == "Versionshinweise" else "COMPLETED"
        assert prefect_server.task_run(run_id)["state"]["type"] == expected


# --- the event loop -------------------------------------------------------------------


async def health_latencies(url: str, path: str, jobs: int) -> tuple[list[float], list[str]]:
    """POST `jobs` jobs to `path` at once; meanwhile GET /health again and again. Returns
    each /health request's latency, in seconds, until the last POST is answered, and the
    jobs' ids."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=300) as posts,
        httpx.AsyncClient(base_url=url, timeout=300) as probe,
    ):
        await probe.get("/health")  # connected before the load starts
        submitting = asyncio.gather(*(posts.post(path, json=ENGLISH) for _ in range(jobs)))
        submitted = asyncio.ensure_future(submitting)
        latencies = []
        while not submitted.done():
            started = time.perf_counter()
            assert (await probe.get("/health")).status_code == 200
            latencies.append(time.perf_counter() - started)
        responses = await submitted
    assert [r.status_code for r in responses] == [202] * jobs
    return latencies, [r.json()["id"] for r in responses]


def test_submitting_keeps_the_event_loop_free(prefect_server, app, started):
    """The step's POST /jobs (.delay() in the threadpool) against the same app's
    /blocking-jobs (tests/blocking_api_08.py: .delay() called on the event loop), side by
    side in one uvicorn process: how long /health waits while 10 jobs are submitted at once.
    The step's task server (from `app`) is subscribed throughout and runs the jobs: a task
    server started only after 20 runs were queued sometimes ran none of them (see the lesson)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "uvicorn", "blocking_api_08:app", "--app-dir", "tests"]
    blocking = Process("api", [*argv, "--port", str(port)], env=prefect_server.env, echo=False)
    started.append(blocking)
    wait_until_answering(f"{url}/health", blocking)
    before = count_runs(prefect_server, tags={"all_": [JOB_TAG]})
    # The first .delay() in a process sets up Prefect's client: not part of the comparison.
    warm_up = httpx.post(f"{url}/jobs", json=ENGLISH, timeout=60)
    assert warm_up.status_code == 202, warm_up.text

    threadpool, ids = asyncio.run(health_latencies(url, "/jobs", jobs=10))
    event_loop, more_ids = asyncio.run(health_latencies(url, "/blocking-jobs", jobs=10))

    # On the event loop, every .delay() holds up every other request: /health waits for
    # several submissions in a row. In the threadpool it is answered between them.
    worst_threadpool, worst_event_loop = max(threadpool), max(event_loop)
    print(
        f"worst /health: threadpool {worst_threadpool:.3f} s, event loop {worst_event_loop:.3f} s"
    )
    assert worst_event_loop > 3 * worst_threadpool

    # The jobs were real: the task server runs them all (and leaves none queued behind us).
    assert count_runs(prefect_server, tags={"all_": [JOB_TAG]}) == before + 11
    deadline = time.monotonic() + 90
    ours = {"any_": [warm_up.json()["id"], *ids, *more_ids]}
    while count_runs(prefect_server, id=ours, state={"type": {"any_": ["COMPLETED"]}}) < 21:
        if time.monotonic() > deadline:
            runs = prefect_server.api("POST", "/task_runs/filter", json={"task_runs": {"id": ours}})
            states = sorted(r["state"]["name"] for r in runs)
            raise AssertionError(f"the submitted jobs did not finish: {states}")
        time.sleep(0.5)
