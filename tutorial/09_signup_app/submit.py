import os
import secrets
import time

import httpx

API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")
FINAL = {"completed", "failed", "cancelled"}


def wait_for_jobs(client: httpx.Client, location: str, token: str, timeout: float = 60) -> dict:
    """GET the user until every job has finished: the app answers at once, we do the waiting."""
    auth = {"Authorization": f"Bearer {token}"}  # only the signup's token can read the user
    deadline = time.monotonic() + timeout
    while True:
        user = client.get(location, headers=auth).raise_for_status().json()
        if all(job["status"] in FINAL for job in user["jobs"]):
            return user
        if time.monotonic() > deadline:
            raise TimeoutError(f"the jobs did not finish within {timeout} s: {user['jobs']}")
        time.sleep(0.5)


# region main
if __name__ == "__main__":
    email = f"ada.{secrets.token_hex(3)}@example.com"  # a fresh address: a second one is a 409
    with httpx.Client(base_url=API_URL, timeout=30) as client:
        response = client.post("/users", json={"email": email, "name": "Ada Lovelace"})
        signup = response.raise_for_status().json()
        print(f"POST /users -> {response.status_code} Location: {response.headers['Location']}")
        print(f"  jobs: {', '.join(job['kind'] + ' ' + job['status'] for job in signup['jobs'])}")

        user = wait_for_jobs(client, response.headers["Location"], signup["token"])
        for job in user["jobs"]:
            print(f"  {job['kind']}: {job['status']} after {job['attempts']} attempt(s)")

        inbox = client.get("/fake-mail/messages", params={"to": email}).json()
        print(f"{email} got {len(inbox)} email(s) for {sum(m['requests'] for m in inbox)} requests")

        again = client.post("/users", json={"email": email.upper(), "name": "Ada again"})
        print(f"POST /users with {email.upper()} -> {again.status_code} {again.json()['detail']}")
    # endregion main
