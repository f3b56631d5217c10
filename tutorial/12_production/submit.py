"""A client of the production stack: a few jobs through the app (step 08), each read back
until it ends; then a Prefect client without the auth string, which the server refuses."""

import os
import time
import uuid

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")
API_KEY = os.environ["JOBS_API_KEY"]  # the stack gives it to the app and to this command
JOBS = int(os.environ.get("JOBS", "4"))
TEXT = "The new version is faster. It starts in half the time and uses less memory."


def post_job(app: httpx.Client, document: dict) -> str:
    """POST /jobs; on a 503 or no answer, again with the same Idempotency-Key: never two jobs."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    for _ in range(10):
        try:
            response = app.post("/jobs", json=document, headers=headers)
        except httpx.TransportError:
            time.sleep(1)
            continue
        if response.status_code != 503:
            return response.raise_for_status().headers["Location"]
        time.sleep(float(response.headers.get("Retry-After", "5")))
    raise RuntimeError("POST /jobs: no answer but 503 after 10 tries")


def finished_job(app: httpx.Client, location: str, timeout: float = 120) -> dict:
    """GET the job until it has ended, for `timeout` seconds at most."""
    deadline = time.monotonic() + timeout
    while (job := app.get(location).json())["status"] not in ("completed", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{location} still {job['status']} after {timeout} s")
        time.sleep(0.5)
    return job


# region main
if __name__ == "__main__":
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=API_URL, headers=auth, timeout=30) as app:
        jobs = [post_job(app, {"title": f"Document {n}", "text": TEXT}) for n in range(JOBS)]
        for location in jobs:
            job = finished_job(app, location)
            print(f"{location}: {job['status']} {job['result'] or job['error']}")

    # The Prefect API itself: a client without the auth string gets 401.
    with temporary_settings({PREFECT_API_AUTH_STRING: None}):
        try:
            with get_client(sync_client=True) as client:
                client.read_task_runs(limit=1)
        except PrefectHTTPStatusError as exc:
            print(f"without the auth string: {exc.response.status_code} {exc.response.json()}")
# endregion main
