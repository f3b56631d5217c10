"""Step 08: a FastAPI app answers at once (202 + Location) and task servers do the slow work;
GET /jobs/{id} reads the run's state from Prefect and shows a client only its own jobs.
Every client authenticates; a retry with the same Idempotency-Key gets the same job; when
Prefect is down or its queue is full the app answers 503 at once."""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
from harness import UUID, PrefectServer, load_module, step_dir, step_tasks, wait_for
from prefect.client.schemas.objects import StateType

from tutorial.runner import (
    Process,
    free_port,
    wait_until_answering,
    wait_until_subscribed,
)

STEP = step_dir(8)
JOB_TAG = "api:score_document"
# Two clients of the app, each with its own key.
KEYS = {"alice": secrets.token_urlsafe(24), "bob": secrets.token_urlsafe(24)}
JOBS_API_KEYS = ",".join(f"{name}={key}" for name, key in KEYS.items())
FINAL = {"completed", "failed", "cancelled"}
ENGLISH = {
    "title": "Release notes",
    "text": "The new version is faster. It starts in half the time.",
}
GERMAN = {"title": "Versionshinweise", "text": "Die neue Version ist schneller."}


def count_runs(prefect_server, **task_run_filter) -> int:
    body = {"task_runs": task_run_filter} if task_run_filter else {}
    return prefect_server.api("POST", "/task_runs/count", json=body)


def auth(client: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[client]}"}


def as_client(url: str, client: str = "alice") -> httpx.Client:
    return httpx.Client(base_url=url, headers=auth(client), timeout=30)


def post_job(client: httpx.Client, document: dict, key: str | None = None) -> httpx.Response:
    """POST /jobs as a well-behaved client does: on a 503 (a Prefect server still cold, or
    SQLite busy for longer than the app waits) it sends the same request again, with the same
    Idempotency-Key, so it never gets two jobs."""
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}

    def post() -> httpx.Response | None:
        try:
            return client.post("/jobs", json=document, headers=headers)
        except httpx.TransportError:  # a kept-alive connection the app just closed
            return None

    return wait_for(
        post,
        lambda response: response is not None and response.status_code != 503,
        timeout=90,
        interval=1,
        what="POST /jobs to answer other than 503",
    )


def app_env(tmp: Path, **env: str) -> dict[str, str]:
    """What the app needs besides Prefect's settings: its clients' keys, its database."""
    return {"JOBS_API_KEYS": JOBS_API_KEYS, "JOBS_DB": str(tmp / "jobs.db"), **env}


# --- the app and its task server ------------------------------------------------------


@pytest.fixture(scope="module")
def app_db(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("step-08-app")


@pytest.fixture(scope="module")
def app(prefect_server, app_db) -> Iterator[str]:
    """The step's task server and app (api.py under uvicorn), started side by side once for
    the tests that only drive them, and stopped after the last one, failed or not. Returns
    the app's base URL."""
    processes = []
    try:
        processes.append(server := prefect_server.spawn(STEP / "task_server.py"))
        api, url = prefect_server.spawn_api(STEP, **app_env(app_db))
        processes.append(api)
        wait_until_subscribed(prefect_server.api_url, server)
        wait_until_answering(f"{url}/health", api)
        # The first submission of a cold Prefect server can take longer than the app waits.
        with as_client(url) as client:
            assert post_job(client, ENGLISH).status_code == 202
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

    with as_client(url) as client:
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
    assert sorted(run["tags"]) == [JOB_TAG, "client:alice"]
    assert run["flow_run_id"] is None
    assert prefect_server.state_names(job_id) == ["Scheduled", "Pending", "Running", "Completed"]
    assert prefect_server.result(job_id) == answers[-1]["result"]


def test_a_failed_job_is_reported_not_raised(prefect_server, app):
    url = app

    with as_client(url) as client:
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
    with as_client(url) as client:
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

    with as_client(url) as client:
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
with tags({tag!r}, "client:alice"):
    print("older code:", score_document.delay(Document(title="Old", text="Old.")).task_run_id)
"""


def test_only_this_apis_runs_are_visible(prefect_server, app, tmp_path):
    script = tmp_path / "other_runs.py"
    script.write_text(OTHER_RUNS.format(step=str(STEP), tag=JOB_TAG))
    submit = prefect_server.run_script(script)
    assert submit.code == 0, submit.output
    ids = dict(re.findall(rf"^(.+): ({UUID})$", submit.output, re.M))
    url = app

    with as_client(url) as client:
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
    assert sorted(older["tags"]) == [JOB_TAG, "client:alice"]
    assert older["task_key"].startswith("score_document-")
    assert older["task_key"] != prefect_server.task_run(ids["untagged"])["task_key"]
    assert "result(" not in (STEP / "api.py").read_text().replace("aresult(", "")


def test_every_prefect_state_type_has_a_status():
    """A state type missing from STATUS would turn GET /jobs/{id} into a 500."""
    mapped = re.findall(r"^    StateType\.(\w+): ", (STEP / "api.py").read_text(), re.M)
    assert sorted(mapped) == sorted(StateType.__members__)


def test_openapi_documents_the_models(app):
    url = app
    with as_client(url) as client:
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()

    schemas = spec["components"]["schemas"]
    assert {"Document", "DocumentScore", "Job", "Problem"} <= set(schemas)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schemas["Job"]["properties"]["status"]["enum"] == [
        "queued",
        "running",
        "cancelling",
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
    assert {"202", "400", "401", "409", "422", "503"} == set(post["responses"])
    assert "Retry-After" in post["responses"]["503"]["headers"]
    assert post["security"] == [{"HTTPBearer": []}]
    (header,) = [p for p in post["parameters"] if p["in"] == "header"]
    assert header["name"] == "idempotency-key"

    get = spec["paths"]["/jobs/{job_id}"]["get"]
    assert get["parameters"][0]["schema"]["format"] == "uuid"
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Job")
    assert get["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Problem"
    )
    assert {"200", "401", "404", "422", "503"} == set(get["responses"])
    delete = spec["paths"]["/jobs/{job_id}"]["delete"]
    assert {"202", "401", "404", "409", "422", "503"} == set(delete["responses"])
    assert delete["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_submit_py(prefect_server, app):
    submit = prefect_server.run_script(STEP / "submit.py", API_URL=app, JOBS_API_KEY=KEYS["bob"])

    assert submit.code == 0, submit.output
    posted = re.findall(rf"^POST /jobs '(.+)' -> Location: /jobs/({UUID})$", submit.output, re.M)
    assert [title for title, _ in posted] == ["Release notes", "Versionshinweise"]
    ids = dict(posted)
    lines = submit.output.splitlines()
    release = f"/jobs/{ids['Release notes']}: completed, {{'title': 'Release notes', 'words': 11"
    assert any(line.startswith(release) for line in lines), submit.output
    assert (
        f"/jobs/{ids['Versionshinweise']}: failed, Task run encountered an exception ValueError:"
        " 'Versionshinweise' does not look like English text"
    ) in lines
    # What the client printed is what Prefect holds, and the runs are bob's.
    assert prefect_server.task_run(ids["Release notes"])["state"]["type"] == "COMPLETED"
    assert prefect_server.task_run(ids["Versionshinweise"])["state"]["type"] == "FAILED"
    for run_id in ids.values():
        assert "client:bob" in prefect_server.task_run(run_id)["tags"]


# --- who may see a job ------------------------------------------------------------------


def test_every_request_but_health_needs_a_clients_key(prefect_server, app):
    url = app
    before = count_runs(prefect_server)
    wrong = [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {KEYS['alice']}x"},
        {"Authorization": f"Basic {KEYS['alice']}"},
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        for headers in wrong:
            for method, path, body in [
                ("POST", "/jobs", ENGLISH),
                ("GET", f"/jobs/{uuid.uuid4()}", None),
                ("DELETE", f"/jobs/{uuid.uuid4()}", None),
            ]:
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (headers, path, response.text)
                assert response.json() == {"detail": "missing or wrong API key"}
                assert response.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/health").status_code == 200  # for load balancers: no key
    assert count_runs(prefect_server) == before


def test_the_app_does_not_start_without_keys(prefect_server, started, tmp_path):
    """No default key that works in production: no keys, no app."""
    # Both at once: each takes seconds to import Prefect before it fails.
    none, _ = prefect_server.spawn_api(STEP, **app_env(tmp_path, JOBS_API_KEYS=""))
    started.append(none)
    short, _ = prefect_server.spawn_api(STEP, **app_env(tmp_path, JOBS_API_KEYS="alice=short"))
    started.append(short)
    assert none.wait(timeout=90) != 0
    assert "set JOBS_API_KEYS (client=key pairs): the app has no clients" in none.output
    assert short.wait(timeout=90) != 0
    assert "the key of 'alice' is shorter than 16 characters" in short.output


def test_a_client_sees_only_its_own_jobs(prefect_server, app):
    url = app
    with as_client(url, "alice") as alice, as_client(url, "bob") as bob:
        job_id = post_job(alice, ENGLISH).json()["id"]
        assert alice.get(f"/jobs/{job_id}").status_code == 200
        # Bob is told exactly what he would be told for an id that does not exist.
        for unknown in (job_id, str(uuid.uuid4())):
            response = bob.get(f"/jobs/{unknown}")
            assert response.status_code == 404, response.text
            assert response.json() == {"detail": "job not found"}
        poll_job(alice, f"/jobs/{job_id}")
    assert "client:alice" in prefect_server.task_run(job_id)["tags"]


# --- Idempotency-Key ----------------------------------------------------------------------


def test_a_retry_with_the_same_idempotency_key_gets_the_same_job(prefect_server, app):
    url = app
    ours = {"all_": ["client:alice"]}
    before = count_runs(prefect_server, tags=ours)
    key = str(uuid.uuid4())
    with as_client(url) as alice:
        first = post_job(alice, ENGLISH, key)
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        # Eight retries at once, as a client with a short timeout might send them.
        with ThreadPoolExecutor(8) as pool:
            retries = list(pool.map(lambda _: post_job(alice, ENGLISH, key), range(8)))
        assert {(r.status_code, r.json()["id"]) for r in retries} == {(202, job_id)}
        assert {r.headers["Location"] for r in retries} == {f"/jobs/{job_id}"}
        # Another client's key with the same name is another job.
        with as_client(url, "bob") as bob:
            assert post_job(bob, ENGLISH, key).json()["id"] != job_id
        # The same key with another document is a mistake, said plainly.
        response = alice.post("/jobs", json=GERMAN, headers={"Idempotency-Key": key})
        assert response.status_code == 409, response.text
        assert response.json() == {"detail": "this Idempotency-Key was used with another document"}
        answers = poll_job(alice, f"/jobs/{job_id}")
        # A retry after the job ended returns it as it is now.
        again = post_job(alice, ENGLISH, key)
        assert again.status_code == 202 and again.json() == answers[-1]

    assert count_runs(prefect_server, tags=ours) == before + 1
    assert prefect_server.state_names(job_id) == ["Scheduled", "Pending", "Running", "Completed"]


def test_a_key_claimed_before_a_crash_still_gets_its_job(prefect_server, app, app_db):
    """The app claims the key (and the job's id) in its database, then submits. If it dies in
    between, the client's retry finds the claim and submits the job under the claimed id."""
    key = str(uuid.uuid4())
    with step_tasks(STEP) as tasks:
        api = load_module(STEP / "api.py", "api_08")
        claimed = api.Submissions(str(app_db / "jobs.db")).claim(
            "alice", key, tasks.Document(**ENGLISH)
        )
    with pytest.raises(httpx.HTTPStatusError):
        prefect_server.task_run(str(claimed))  # claimed, never submitted

    with as_client(app) as alice:
        response = post_job(alice, ENGLISH, key)
        assert response.status_code == 202, response.text
        assert response.json()["id"] == str(claimed)
        assert poll_job(alice, f"/jobs/{claimed}")[-1]["status"] == "completed"


# --- Prefect slow, down or full -----------------------------------------------------------


def assert_unavailable(response: httpx.Response, seconds: float) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "the job service is unavailable, retry later"}
    assert response.headers["Retry-After"] == "5"
    assert seconds < 20  # the app gives up after 5 s; the rest is a busy machine


def timed(call, *args, **kwargs) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call(*args, **kwargs)
    return response, time.monotonic() - started


def test_prefect_down_is_a_503_at_once(api_server, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    _, url = api_server(STEP, PREFECT_API_URL=closed, **app_env(tmp_path))
    with as_client(url) as alice:
        assert_unavailable(*timed(alice.post, "/jobs", json=ENGLISH))
        assert_unavailable(*timed(alice.get, f"/jobs/{uuid.uuid4()}"))
        assert alice.get("/health").status_code == 200


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory) -> Iterator[PrefectServer]:
    """A Prefect server of our own that queues at most 2 runs per task key."""
    home = tmp_path_factory.mktemp("small-queue-home")
    size = {"PREFECT_SERVER_TASKS_SCHEDULING_MAX_SCHEDULED_QUEUE_SIZE": "2"}
    with PrefectServer.start(home, **size) as server:
        yield server


def test_a_full_queue_is_a_503_and_the_retry_gets_the_job(small_queue, started, tmp_path):
    """With no task server, 2 runs fill the queue. The next POST waits inside the Prefect
    server for a free slot; the app gives up after 5 s and answers 503, but the Prefect
    server creates that run anyway once a slot frees. A retry with the same key gets it."""
    api, url = small_queue.spawn_api(STEP, **app_env(tmp_path))
    started.append(api)
    wait_until_answering(f"{url}/health", api)
    ours = {"all_": ["client:alice"]}
    with as_client(url) as alice:
        queued = [post_job(alice, ENGLISH).json()["id"] for _ in range(2)]
        key = str(uuid.uuid4())
        assert_unavailable(
            *timed(alice.post, "/jobs", json=ENGLISH, headers={"Idempotency-Key": key})
        )
        assert_unavailable(
            *timed(alice.post, "/jobs", json=ENGLISH, headers={"Idempotency-Key": key})
        )
        assert count_runs(small_queue, tags=ours) == 2
        db = sqlite3.connect(tmp_path / "jobs.db")
        (job_id,) = db.execute("SELECT job_id FROM submissions WHERE key = ?", (key,)).fetchone()
        db.close()

        task_server = small_queue.spawn(STEP / "task_server.py")
        started.append(task_server)
        # The run the client was told 503 about appears by itself once the queue has room.
        wait_for(
            lambda: count_runs(small_queue, id={"any_": [job_id]}) == 1,
            timeout=90,
            what="the timed-out submission to be created",
        )
        retry = post_job(alice, ENGLISH, key)
        assert retry.status_code == 202 and retry.json()["id"] == job_id
        for location in (*queued, job_id):
            assert poll_job(alice, f"/jobs/{location}")[-1]["status"] == "completed"
    assert count_runs(small_queue, tags=ours) == 3


@contextmanager
def counting_proxy(api_url: str) -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP proxy in front of the Prefect API; yields its API URL and the connections made."""
    target = httpx.URL(api_url)
    listener = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((target.host, target.port))
            connections.append(conn)
            threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api", connections
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for conn in connections:
            conn.close()


def test_the_app_keeps_one_prefect_client(prefect_server, api_server, app, tmp_path):
    """Ten GETs in a row reuse the app's one client and its connection to Prefect; a client
    per request would open ten."""
    with counting_proxy(prefect_server.api_url) as (proxy_url, connections):
        _, url = api_server(STEP, PREFECT_API_URL=proxy_url, **app_env(tmp_path))
        with as_client(url) as alice:
            job_id = post_job(alice, ENGLISH).json()["id"]
            before = len(connections)
            for _ in range(10):
                assert alice.get(f"/jobs/{job_id}").status_code == 200
            assert len(connections) - before <= 1


# --- storage -------------------------------------------------------------------------------


def test_a_missing_result_file_is_a_clear_answer(prefect_server, app):
    with as_client(app) as alice:
        job_id = post_job(alice, ENGLISH).json()["id"]
        assert poll_job(alice, f"/jobs/{job_id}")[-1]["status"] == "completed"
        result_file = Path(prefect_server.task_run(job_id)["state"]["data"]["storage_key"])
        result_file.unlink()  # storage cleaned up, or a volume lost

        response = alice.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": job_id,
        "status": "completed",
        "result": None,
        "error": "the job completed, but its result is no longer available",
    }


def test_a_shared_result_storage_is_not_enough(small_queue, started, tmp_path):
    """Two machines (here: two Prefect homes) that share only the results' storage block.
    The parameters go to the task-scheduling storage, which is each one's local folder: the
    task server cannot read them and deletes the run, so the job that got its 202 is 404
    later. With the same block for the parameters too, the job completes."""
    from prefect.filesystems import LocalFileSystem
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: small_queue.api_url}):
        LocalFileSystem(basepath=str(tmp_path / "shared")).save("shared", overwrite=True)
    results = {"PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "local-file-system/shared"}
    both = {**results, "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK": "local-file-system/shared"}
    task_server = small_queue.spawn(
        STEP / "task_server.py", PREFECT_HOME=str(tmp_path / "task-server"), **both
    )
    started.append(task_server)
    # Both apps start beside the task server: each process takes seconds to import Prefect.
    apps = {}
    for name, storage in {"results only": results, "both": both}.items():
        home = tmp_path / name.replace(" ", "-")
        api, url = small_queue.spawn_api(STEP, PREFECT_HOME=str(home), **storage, **app_env(home))
        started.append(api)
        apps[name] = api, url
    wait_until_subscribed(small_queue.api_url, task_server)
    jobs = {}
    for name, (api, url) in apps.items():
        wait_until_answering(f"{url}/health", api)
        with as_client(url) as alice:
            response = post_job(alice, ENGLISH)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            jobs[name] = wait_for(
                lambda job_id=job_id: alice.get(f"/jobs/{job_id}"),
                lambda r: r.status_code == 404 or r.json()["status"] == "completed",
                timeout=90,
                what=f"the job ({name}) to end",
            )
            jobs[name + " id"] = job_id

    assert jobs["results only"].status_code == 404, jobs["results only"].text
    assert jobs["results only"].json() == {"detail": "job not found"}
    run_id = jobs["results only id"]
    assert f"Failed to read parameters for task run UUID('{run_id}')" in task_server.output
    assert f"Deleting task run UUID('{run_id}') because it failed to submit" in task_server.output
    with pytest.raises(httpx.HTTPStatusError):
        small_queue.task_run(run_id)  # gone from Prefect, not only hidden
    assert jobs["both"].status_code == 200
    assert jobs["both"].json()["result"]["words"] == 11


# --- the event loop -------------------------------------------------------------------


async def health_latencies(url: str, path: str, jobs: int) -> tuple[list[float], list[str]]:
    """POST `jobs` jobs to `path` at once; meanwhile GET /health again and again. Returns
    each /health request's latency, in seconds, until the last POST is answered, and the
    jobs' ids. A 503 (SQLite busy for longer than the app waits) is retried as a client
    would, with the same Idempotency-Key."""
    async with (
        httpx.AsyncClient(base_url=url, headers=auth(), timeout=300) as posts,
        httpx.AsyncClient(base_url=url, timeout=300) as probe,
    ):

        async def post() -> httpx.Response:
            headers = {"Idempotency-Key": str(uuid.uuid4())}
            while True:
                try:
                    response = await posts.post(path, json=ENGLISH, headers=headers)
                except httpx.TransportError:  # a kept-alive connection the app just closed
                    continue
                if response.status_code != 503:
                    return response
                await asyncio.sleep(float(response.headers["Retry-After"]))

        await probe.get("/health")  # connected before the load starts
        submitting = asyncio.gather(*(post() for _ in range(jobs)))
        submitted = asyncio.ensure_future(submitting)
        latencies = []
        while not submitted.done():
            started = time.perf_counter()
            assert (await probe.get("/health")).status_code == 200
            latencies.append(time.perf_counter() - started)
        responses = await submitted
    assert [r.status_code for r in responses] == [202] * jobs
    return latencies, [r.json()["id"] for r in responses]


def test_submitting_keeps_the_event_loop_free(prefect_server, app, started, tmp_path):
    """The step's POST /jobs (create_run awaited on the app's one client) against the same
    app's /blocking-jobs (tests/blocking_api_08.py: .delay() called on the event loop), side by
    side in one uvicorn process: how long /health waits while 10 jobs are submitted at once.
    The step's task server (from `app`) is subscribed throughout and runs the jobs: a task
    server started only after 20 runs were queued sometimes ran none of them (see the lesson)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "uvicorn", "blocking_api_08:app", "--app-dir", "tests"]
    env = {**prefect_server.env, **app_env(tmp_path)}
    blocking = Process("api", [*argv, "--port", str(port)], env=env, echo=False)
    started.append(blocking)
    wait_until_answering(f"{url}/health", blocking)
    before = count_runs(prefect_server, tags={"all_": [JOB_TAG]})
    # The first .delay() in a process sets up Prefect's client: not part of the comparison.
    warm_up = httpx.post(f"{url}/jobs", json=ENGLISH, headers=auth(), timeout=60)
    assert warm_up.status_code == 202, warm_up.text

    awaited, ids = asyncio.run(health_latencies(url, "/jobs", jobs=10))
    event_loop, more_ids = asyncio.run(health_latencies(url, "/blocking-jobs", jobs=10))

    # On the event loop, every .delay() holds up every other request, its network calls
    # included: /health waits for several submissions in a row. An awaited create_run gives the
    # loop back while it waits for the Prefect server, and /health is answered in between.
    worst_awaited, worst_event_loop = max(awaited), max(event_loop)
    print(f"worst /health: create_run {worst_awaited:.3f} s, .delay() {worst_event_loop:.3f} s")
    assert worst_event_loop > 3 * worst_awaited

    # The jobs were real: both paths created every run. Whether the task server then runs
    # them all is not waited for here: in one fresh-clone run, 2 of the 21 stayed Pending and
    # Running (and 9 Scheduled behind them) for more than 90 s, not understood yet; the other
    # tests of this step check that submitted jobs complete.
    assert count_runs(prefect_server, tags={"all_": [JOB_TAG]}) == before + 11
    ours = {"any_": [warm_up.json()["id"], *ids, *more_ids]}
    assert count_runs(prefect_server, id=ours) == 21
