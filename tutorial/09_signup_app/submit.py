import os
import secrets
import sys
import time

import httpx

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")
FINAL = {"completed", "failed", "cancelled"}


def show_jobs(user: dict) -> str:
    return ", ".join(f"{job['kind']} {job['status']}" for job in user["jobs"])


if __name__ == "__main__":
    # A fresh address each run: signing up the same one twice is refused (see the end).
    email = f"ada.{secrets.token_hex(3)}@example.com"
    with httpx.Client(base_url=API_URL, timeout=30) as client:
        started = time.perf_counter()
        response = client.post("/users", json={"email": email, "name": "Ada Lovelace"})
        response.raise_for_status()
        location = response.headers["Location"]
        # Only the token in this answer can read the user, and it is shown only here.
        auth = {"Authorization": f"Bearer {response.json()['token']}"}
        print(f"POST /users -> {response.status_code} after {time.perf_counter() - started:.2f} s")
        print(f"  Location: {location}")
        print(f"  jobs: {show_jobs(response.json())}")

        # Poll the user until every job has finished, but never forever.
        deadline = time.monotonic() + 60
        while True:
            user = client.get(location, headers=auth).raise_for_status().json()
            if all(job["status"] in FINAL for job in user["jobs"]):
                break
            if time.monotonic() > deadline:
                sys.exit(f"the jobs did not finish within 60 s: {show_jobs(user)}")
            time.sleep(0.5)
        print(f"GET {location} after {time.perf_counter() - started:.1f} s")
        for job in user["jobs"]:
            print(f"  {job['kind']}: {job['status']} after {job['attempts']} attempt(s)")

        inbox = client.get("/fake-mail/messages", params={"to": email}).json()
        print(f"The mail provider holds {len(inbox)} message(s) for {email}")
        for message in inbox:
            print(f"  {message['subject']!r} ({message['requests']} requests with its key)")

        duplicate = client.post("/users", json={"email": email.upper(), "name": "Ada again"})
        print(f"POST /users with {email.upper()} -> {duplicate.status_code}")
        print(f"  {duplicate.json()['detail']}")

    ok = (
        all(job["status"] == "completed" for job in user["jobs"])
        and len(inbox) == 1
        and duplicate.status_code == 409
    )
    print("Everything behaved as expected" if ok else "Something did not behave as expected")
    sys.exit(0 if ok else 1)
