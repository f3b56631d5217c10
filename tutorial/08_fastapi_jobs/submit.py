import os
import sys
import time

import httpx

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")

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

if __name__ == "__main__":
    ok = True
    with httpx.Client(base_url=API_URL, timeout=30) as client:
        # A malformed body is refused at once, and nothing is submitted.
        response = client.post("/jobs", json={"title": "No text"})
        errors = [f"{e['loc'][-1]}: {e['msg']}" for e in response.json()["detail"]]
        print(f"POST /jobs without a text -> {response.status_code} {'; '.join(errors)}")
        ok &= response.status_code == 422

        jobs = {}
        for document, expected in DOCUMENTS:
            response = client.post("/jobs", json=document)
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
