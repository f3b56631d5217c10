import os
import sys
import time
import uuid

import httpx

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")
API_KEY = os.environ["JOBS_API_KEY"]  # this client's key, one of the app's JOBS_API_KEYS

# Each document, and the status its job should end in.
DOCUMENTS = [
    (
        {
            "title": "Release notes",
            "text": "The new version is faster. It starts in half the time and uses less memory.",
        },
        "completed",
    ),
    (
        {
            "title": "Terms of service",
            "text": "Notwithstanding the foregoing, the licensee shall indemnify the licensor"
            " against any and all liabilities arising from the utilisation of the software.",
        },
        "completed",
    ),
    # Valid for the API, but the scorer only knows English: this job fails on purpose.
    ({"title": "Versionshinweise", "text": "Die neue Version ist schneller."}, "failed"),
]


def post_job(client: httpx.Client, document: dict) -> httpx.Response:
    """POST /jobs until the app answers other than 503. Every try sends the same
    Idempotency-Key: if an earlier one got through, the app returns that job, never a second."""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    for _ in range(10):
        try:
            response = client.post("/jobs", json=document, headers=headers)
        except httpx.TransportError:  # no answer at all: the job may exist, or not
            time.sleep(1)
            continue
        if response.status_code != 503:
            return response
        time.sleep(float(response.headers.get("Retry-After", "5")))
    raise RuntimeError("POST /jobs: no answer but 503 after 10 tries")


if __name__ == "__main__":
    ok = True
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=API_URL, headers=auth, timeout=30) as client:
        # A malformed body is refused at once, and nothing is submitted.
        response = client.post("/jobs", json={"title": "No text"})
        errors = [f"{e['loc'][-1]}: {e['msg']}" for e in response.json()["detail"]]
        print(f"POST /jobs without a text -> {response.status_code} {'; '.join(errors)}")
        ok &= response.status_code == 422

        jobs = {}
        for document, expected in DOCUMENTS:
            response = post_job(client, document)
            response.raise_for_status()
            location = response.headers["Location"]
            print(
                f"POST /jobs {document['title']!r} -> {response.status_code} Location: {location}"
            )
            jobs[location] = (document["title"], expected)

        # Poll each job until it is final; the API answers at once every time.
        last_status = {}
        deadline = time.monotonic() + 60
        while jobs and time.monotonic() < deadline:
            for location, (title, expected) in list(jobs.items()):
                job = client.get(location).json()
                if job["status"] != last_status.get(location):
                    last_status[location] = job["status"]
                    print(f"{title}: {job['status']}")
                if job["status"] == "completed":
                    print(f"  result: {job['result']}")
                elif job["status"] == "failed":
                    print(f"  error: {job['error']}")
                if job["status"] in ("completed", "failed", "cancelled"):
                    ok &= job["status"] == expected
                    del jobs[location]
            time.sleep(0.5)
        for title, _ in jobs.values():
            print(f"{title}: not finished within 60 s (is a task server running?)")

    sys.exit(0 if ok and not jobs else 1)
