"""Push JOBS jobs through the app's HTTP API and check that every one completes; then show
that a client without the auth string is refused by the Prefect server."""

import os
import sys
import time
import uuid

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")
JOBS = int(os.environ.get("JOBS", "20"))
API_KEY = os.environ["JOBS_API_KEY"]  # the stack gives it to the app and to this command
TEXT = "The new version is faster. It starts in half the time and uses less memory."


def refused_without_auth() -> bool:
    """The same client, without the auth string."""
    with temporary_settings({PREFECT_API_AUTH_STRING: None}):
        try:
            with get_client(sync_client=True) as client:
                client.read_task_runs(limit=1)
        except PrefectHTTPStatusError as exc:
            print(f"without the auth string: {exc.response.status_code} {exc.response.json()}")
            return exc.response.status_code == 401
    print("without the auth string: the Prefect server answered")
    return False


def post_job(app: httpx.Client, document: dict) -> httpx.Response:
    """On a 503 or no answer, retry with the same Idempotency-Key: never two jobs."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    for _ in range(10):
        try:
            response = app.post("/jobs", json=document, headers=headers)
        except httpx.TransportError:
            time.sleep(1)
            continue
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers.get("Retry-After", "5")))
    raise RuntimeError("POST /jobs: no answer but 503 after 10 tries")


if __name__ == "__main__":
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=API_URL, headers=auth, timeout=30) as app:
        began = time.monotonic()
        jobs = []
        for n in range(JOBS):
            response = post_job(app, {"title": f"Document {n}", "text": TEXT})
            response.raise_for_status()
            jobs.append(response.headers["Location"])
        print(f"submitted {JOBS} jobs through {API_URL} in {time.monotonic() - began:.1f} s")

        final = ("completed", "failed", "cancelled")
        status = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for location in jobs:
                if status.get(location) not in final:
                    status[location] = app.get(location).json()["status"]
            if all(s in final for s in status.values()):
                break
            time.sleep(0.5)
        completed = sum(s == "completed" for s in status.values())
        print(f"{completed} of {JOBS} jobs completed after {time.monotonic() - began:.1f} s")
        if completed:
            print(f"  one result: {app.get(jobs[-1]).json()['result']}")

    refused = refused_without_auth()
    sys.exit(0 if completed == JOBS and refused else 1)
