"""Tests of step 08's app, the way to test yours: the task's code alone, then the app with
real runs on a real Prefect server and task server, read back from Prefect."""

import time
import uuid

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.objects import StateType

from tasks import Document, readability, score_document

NOTE = {"title": "Note", "text": "The cat sat on the mat."}  # one sentence: about 1 s of work


# --- the task's code, no Prefect at all: only the code's own time -------------------


def test_readability_counts_words_and_sentences():
    score = readability(Document(**NOTE))
    assert (score.words, score.sentences) == (6, 1)


# region unit
def test_the_task_body_runs_as_a_plain_function():
    # .fn is the function under @task: no server, no run, no result storage.
    assert score_document.fn(Document(**NOTE))["words"] == 6


def test_the_task_refuses_text_it_cannot_score():
    with pytest.raises(ValueError, match="does not look like English"):
        score_document.fn(Document(title="Hinweis", text="Die neue Version ist schneller."))
        # endregion unit


# --- the app, its runs and their results: seconds -------------------------------------


def wait_for_job(client, location: str, timeout: float = 60) -> dict:
    """Poll the app until the job is final, with a deadline, as a real client does."""
    deadline = time.monotonic() + timeout
    while (job := client.get(location).json())["status"] in ("queued", "running", "cancelling"):
        assert time.monotonic() < deadline, f"{location} still {job['status']} after {timeout} s"
        time.sleep(0.2)
    return job


# region job
def test_a_job_runs_and_its_result_comes_back(client, task_server):
    response = client.post("/jobs", json=NOTE)
    assert response.status_code == 202, response.text

    job = wait_for_job(client, response.headers["Location"])
    assert job["status"] == "completed"
    assert job["result"]["words"] == 6

    # What Prefect holds: a background run, Completed, with the result the API returned.
    with get_client(sync_client=True) as prefect:
        run = prefect.read_task_run(job["id"])
    assert run.state.type == StateType.COMPLETED
    assert run.flow_run_id is None  # a background run, not a task inside a flow
    assert run.state.result() == job["result"]
    # endregion job


def test_a_bad_request_enqueues_nothing(client, prefect_api, task_server):
    def runs() -> int:
        return httpx.post(f"{prefect_api}/task_runs/count", json={}).json()

    before = runs()
    response = client.post("/jobs", json={"title": "No text"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "text"]
    assert runs() == before

    # Refused by the app's own rule: an Idempotency-Key reused for another document.
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/jobs", json=NOTE, headers=key)
    assert first.status_code == 202, first.text
    reused = client.post("/jobs", json={**NOTE, "title": "Another"}, headers=key)
    assert reused.status_code == 409, reused.text
    assert runs() == before + 1  # the first request's job, and no other
    assert wait_for_job(client, first.headers["Location"])["status"] == "completed"
