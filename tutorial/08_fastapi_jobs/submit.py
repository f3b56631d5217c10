import os
import time
import uuid

import httpx

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")
API_KEY = os.environ["JOBS_API_KEY"]  # this client's key, one of the app's JOBS_API_KEYS

DOCUMENTS = [
    {"title": "Release notes", "text": "The new version is faster. It starts in half the time."},
    # The scorer only knows English: this job fails, and the API says why.
    {"title": "Versionshinweise", "text": "Die neue Version ist schneller."},
]


def post_job(client: httpx.Client, document: dict) -> str:
    """POST /jobs; on a 503 or no answer, send it again with the same Idempotency-Key:
    if an earlier try got through, the app returns that job, never a second one."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    for _ in range(10):
        try:
            response = client.post("/jobs", json=document, headers=headers)
        except httpx.TransportError:
            time.sleep(1)
            continue
        if response.status_code != 503:
            return response.raise_for_status().headers["Location"]
        time.sleep(float(response.headers["Retry-After"]))
    raise RuntimeError("POST /jobs: no answer but 503 after 10 tries")


def wait_for_job(client: httpx.Client, location: str, timeout: float = 60) -> dict:
    """GET the job until it is final: the app answers at once, the client does the waiting."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(location).raise_for_status().json()
        if job["status"] not in ("queued", "running"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{location} still {job['status']} after {timeout} s")
        time.sleep(0.5)


# region main
if __name__ == "__main__":
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=API_URL, headers=auth, timeout=30) as client:
        locations = [post_job(client, document) for document in DOCUMENTS]
        for document, location in zip(DOCUMENTS, locations, strict=True):
            print(f"POST /jobs {document['title']!r} -> Location: {location}")
        for location in locations:
            job = wait_for_job(client, location)
            print(f"{location}: {job['status']}, {job['result'] or job['error']}")
    # endregion main
