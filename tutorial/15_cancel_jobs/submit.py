import os
import time
import uuid

import httpx

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")
API_KEY = os.environ["JOBS_API_KEY"]  # this client's key, one of the app's JOBS_API_KEYS

# Ten sentences: ten seconds of work, with a checkpoint before each.
REPORT = "The year went well. " * 10
JOBS = {"Report A": REPORT, "Report B": REPORT, "Note": "A short note."}


def post_job(client: httpx.Client, title: str) -> str:
    """POST /jobs; on a 503 or no answer, send it again with the same Idempotency-Key."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    document = {"title": title, "text": JOBS[title]}
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


def wait_for(client: httpx.Client, location: str, done, timeout: float = 60) -> dict:
    """GET the job until done(job) is true: the app answers at once, the client waits."""
    deadline = time.monotonic() + timeout
    while not done(job := client.get(location).raise_for_status().json()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{location} still {job['status']} after {timeout} s")
        time.sleep(0.5)
    return job


def final(job: dict) -> bool:
    return job["status"] in ("completed", "failed", "cancelled")


def cancel(client: httpx.Client, title: str, location: str) -> None:
    response = client.delete(location)
    answer = response.json().get("status") or response.json()["detail"]
    print(f"DELETE {title}: {response.status_code} {answer}")


# region main
if __name__ == "__main__":
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=API_URL, headers=auth, timeout=30) as client:
        a, b = post_job(client, "Report A"), post_job(client, "Report B")
        # The task server runs one job at a time: A runs, B waits in the queue.
        wait_for(client, a, lambda job: job["status"] == "running")
        print(f"Report A: running, Report B: {client.get(b).json()['status']}")
        cancel(client, "Report B", b)  # queued: it will never start
        cancel(client, "Report A", a)  # running: it stops at its next checkpoint
        for title, location in (("Report A", a), ("Report B", b)):
            print(f"{title}: {wait_for(client, location, final)['status']}")

        note = post_job(client, "Note")
        print(f"Note: {wait_for(client, note, final)['status']}")
        cancel(client, "Note", note)  # too late: it has completed
    # endregion main
