"""Step 09: a signup app. The user is committed first, the background jobs are queued after,
each job is idempotent, and the page shows the jobs finishing."""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from harness import free_port, step_dir, wait_for
from sqlalchemy import create_engine, text

from tutorial.runner import Process, wait_until_answering, wait_until_subscribed

STEP = step_dir(9)
KINDS = ["welcome_email", "workspace", "crm"]
TASK_NAMES = {"welcome_email": "send_welcome_email", "workspace": "set_up_workspace"}
TASK_NAMES["crm"] = "add_to_crm"
FINAL = {"completed", "failed", "cancelled"}
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class App:
    url: str
    db: str  # the SQLAlchemy URL the app and its task server share

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def rows(self, sql: str, **params) -> list[tuple]:
        engine = create_engine(self.db)
        try:
            with engine.begin() as connection:
                result = connection.execute(text(sql), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()


def start_step(prefect_server, spawn, api_server, tmp_path, **app_env: str) -> tuple[App, Process]:
    """The task server and the app, on a database of the test's own, started side by side."""
    port = free_port()
    app = App(f"http://127.0.0.1:{port}", f"sqlite:///{tmp_path}/signup.db")
    # The task server needs the app's URL (the fake providers live there) and its database.
    server = spawn(STEP / "task_server.py", API_URL=app.url, SIGNUP_DATABASE_URL=app.db)
    api, _ = api_server(STEP, port=port, SIGNUP_DATABASE_URL=app.db, **app_env)
    wait_until_subscribed(prefect_server.api_url, server)
    return app, api


@pytest.fixture(scope="module")
def app(prefect_server, tmp_path_factory) -> Iterator[App]:
    """The task server and the app on a database of their own, started once for the tests
    that only drive them, and stopped after the last one, failed or not."""
    port = free_port()
    app = App(f"http://127.0.0.1:{port}", f"sqlite:///{tmp_path_factory.mktemp('step-09')}/db")
    processes = []
    try:
        env = {"API_URL": app.url, "SIGNUP_DATABASE_URL": app.db}
        processes.append(server := prefect_server.spawn(STEP / "task_server.py", **env))
        api, _ = prefect_server.spawn_api(STEP, port=port, SIGNUP_DATABASE_URL=app.db)
        processes.append(api)
        wait_until_subscribed(prefect_server.api_url, server)
        wait_until_answering(f"{app.url}/health", api)
        yield app
    finally:
        for process in processes:
            process.stop()


class HeldProxy:
    """A TCP proxy in front of the Prefect server that holds every connection until
    `release()`: to the app, a Prefect server that accepts requests and does not answer."""

    def __init__(self, upstream_url: str):
        self.upstream = httpx.URL(upstream_url)
        self.released = threading.Event()
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/api"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.sockets.append(client)
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        self.released.wait()
        if self.closed:
            return
        try:
            upstream = socket.create_connection((self.upstream.host, self.upstream.port))
        except OSError:
            client.close()
            return
        self.sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.closed = True
        self.released.set()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            sock.close()


def bearer(signup: httpx.Response) -> dict[str, str]:
    """The header that reads the user a signup created: its answer's token."""
    return {"Authorization": f"Bearer {signup.json()['token']}"}


def read_user(client: httpx.Client, signup: httpx.Response) -> httpx.Response:
    return client.get(signup.headers["Location"], headers=bearer(signup))


def wait_for_jobs(client: httpx.Client, signup: httpx.Response, timeout: float = 60) -> dict:
    """Poll the user a signup created until every job has finished; the user as last read."""
    return wait_for(
        lambda: read_user(client, signup).raise_for_status().json(),
        lambda user: all(job["status"] in FINAL for job in user["jobs"]),
        timeout,
        what="jobs not finished",
    )


def wait_for_runs(prefect_server, run_ids: list[str], timeout: float = 60) -> None:
    wait_for(
        lambda: [prefect_server.task_run(r)["state"] for r in run_ids],
        lambda states: all(s and s["type"] in {"COMPLETED", "FAILED", "CRASHED"} for s in states),
        timeout,
        what="runs not finished",
    )


def task_run_count(prefect_server) -> int:
    return prefect_server.api("POST", "/task_runs/count", json={})


def job_runs(app: App, user_id: str, timeout: float = 60) -> dict[str, str]:
    """kind -> task run id, as the app recorded them, once it has queued every job."""
    rows = wait_for(
        lambda: app.rows(
            "SELECT kind, task_run_id FROM jobs WHERE user_id = :u", u=uuid.UUID(user_id).hex
        ),
        lambda rows: rows and all(run_id for _, run_id in rows),
        timeout,
        what="jobs not queued",
    )
    return {kind: str(uuid.UUID(run_id)) for kind, run_id in rows}


def sign_up(client: httpx.Client, email: str, name: str = "Ada Lovelace") -> httpx.Response:
    return client.post("/users", json={"email": email, "name": name})


# --- the tests that start an app of their own (with its own task server, if any) -----------
# They come first: two step-09 task servers subscribed at once would take each other's runs,
# and the shared one below stays up from its first test to the end of the module.


def test_bad_bodies_are_422_and_unknown_users_404(prefect_server, api_server, tmp_path):
    db = f"sqlite:///{tmp_path}/signup.db"
    _, url = api_server(STEP, SIGNUP_DATABASE_URL=db)
    runs_before = task_run_count(prefect_server)
    bad_bodies = [
        {},
        {"email": "ada@example.com"},
        {"email": "not an address", "name": "Ada"},
        {"email": "ada@example.com", "name": ""},
        {"email": "ada@example.com", "name": "x" * 101},
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        for body in bad_bodies:
            response = client.post("/users", json=body)
            assert response.status_code == 422, (body, response.text)
        not_json = client.post("/users", content="hello", headers={"Content-Type": "text/plain"})
        assert not_json.status_code == 422

        assert client.get(f"/users/{uuid.uuid4()}").json() == {"detail": "user not found"}
        assert client.get(f"/users/{uuid.uuid4()}").status_code == 404
        assert client.get("/users/not-a-uuid").status_code == 422

        # The fake providers are no part of the app's API.
        paths = client.get("/openapi.json").raise_for_status().json()["paths"]
        assert sorted(paths) == ["/health", "/users", "/users/{user_id}"]

    assert task_run_count(prefect_server) == runs_before
    app = App(url, db)
    assert app.rows("SELECT * FROM users") == []
    assert app.rows("SELECT * FROM jobs") == []


def test_a_user_is_readable_only_with_the_token_its_signup_returned(api_server, tmp_path):
    # No Prefect server answers the app: nothing is queued, and reading a user needs none.
    unreachable = f"http://127.0.0.1:{free_port()}/api"
    db = tmp_path / "signup.db"
    _, url = api_server(STEP, SIGNUP_DATABASE_URL=f"sqlite:///{db}", PREFECT_API_URL=unreachable)
    with httpx.Client(base_url=url, timeout=30) as client:
        ada = sign_up(client, "ada@example.com")
        bob = sign_up(client, "bob@example.com", "Bob")
        assert (ada.status_code, bob.status_code) == (201, 201)
        user = read_user(client, ada).raise_for_status().json()
        assert (user["email"], user["name"]) == ("ada@example.com", "Ada Lovelace")

        def answer(response: httpx.Response) -> tuple:
            headers = {k: v for k, v in response.headers.items() if k != "date"}
            return response.status_code, response.content, headers

        # Without Ada's token, her id answers exactly as an id nobody has.
        unknown = answer(client.get(f"/users/{uuid.uuid4()}", headers=bearer(ada)))
        assert unknown[:2] == (404, b'{"detail":"user not found"}')
        token = ada.json()["token"]
        for headers in [
            {},
            bearer(bob),
            {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},
            {"Authorization": f"Bearer {token[:-1]}"},
            {"Authorization": f"Basic {token}"},
            {"Authorization": token},
        ]:
            assert answer(client.get(ada.headers["Location"], headers=headers)) == unknown, headers

    # The database keeps a hash of each token, never the token.
    assert token.encode() not in db.read_bytes()
    assert bob.json()["token"].encode() not in db.read_bytes()


def test_signups_never_wait_for_prefect_and_two_apps_queue_each_job_once(
    prefect_server, spawn, api_server, tmp_path
):
    """The Prefect server accepts the app's requests and does not answer (overloaded, or a
    network path that hangs). POST /users answers at once all the same; the dispatchers
    queue the jobs once Prefect answers again. Two app processes share the database, as
    behind a load balancer: their dispatchers race for the same jobs, and queue each once."""
    proxy = HeldProxy(prefect_server.api_url)
    try:
        held = {"PREFECT_API_URL": proxy.url}
        app, _ = start_step(prefect_server, spawn, api_server, tmp_path, **held)
        _, second_url = api_server(STEP, SIGNUP_DATABASE_URL=app.db, **held)
        runs_before = task_run_count(prefect_server)
        signups = []
        # A 10 s timeout: the app used to wait for .delay(), which waits up to 60 s per try.
        with (
            httpx.Client(base_url=app.url, timeout=10) as first,
            httpx.Client(base_url=second_url, timeout=10) as second,
        ):
            for number in range(4):
                started = time.monotonic()
                response = sign_up((first, second)[number % 2], f"user{number}@example.com")
                answered_after = time.monotonic() - started
                assert response.status_code == 201, response.text
                assert answered_after < 5, f"POST /users answered after {answered_after:.1f} s"
                signups.append(response)

            # While Prefect holds every request, nothing is queued, and the jobs say so.
            for response in signups:
                user = read_user(first, response).raise_for_status().json()
                assert [job["status"] for job in user["jobs"]] == ["not_queued"] * 3
            assert app.rows("SELECT task_run_id FROM jobs") == [(None,)] * 12
            assert task_run_count(prefect_server) == runs_before

            proxy.release()
            for response in signups:
                user = wait_for_jobs(first, response)
                assert [job["status"] for job in user["jobs"]] == ["completed"] * 3
    finally:
        proxy.close()

    # One run per job in Prefect: no job was queued twice.
    run_ids = {run_id for (run_id,) in app.rows("SELECT task_run_id FROM jobs")}
    assert len(run_ids) == 12
    assert task_run_count(prefect_server) == runs_before + 12


def test_jobs_that_could_not_be_queued_are_queued_when_the_app_starts(
    prefect_server, spawn, api_server, tmp_path
):
    # The Prefect server is unreachable from the app: .delay() fails after the commit.
    unreachable = f"http://127.0.0.1:{free_port()}/api"
    app, down = start_step(
        prefect_server,
        spawn,
        api_server,
        tmp_path,
        PREFECT_API_URL=unreachable,
    )
    port = int(app.url.rsplit(":", 1)[1])
    runs_before = task_run_count(prefect_server)
    with app.client() as client:
        response = sign_up(client, "linus@example.com", "Linus")
    assert response.status_code == 201, response.text
    assert [job["status"] for job in response.json()["jobs"]] == ["not_queued"] * 3
    assert task_run_count(prefect_server) == runs_before
    assert app.rows("SELECT task_run_id FROM jobs") == [(None,)] * 3
    down.stop()

    # The next start of the app queues them, and they complete.
    api_server(STEP, port=port, SIGNUP_DATABASE_URL=app.db)
    with app.client() as client:
        user = wait_for_jobs(client, response)
        inbox = client.get("/fake-mail/messages", params={"to": "linus@example.com"}).json()
    assert [job["status"] for job in user["jobs"]] == ["completed"] * 3
    assert len(inbox) == 1


# --- the tests that share one app and its task server, each with addresses of its own ------


def test_signup_answers_at_once_and_every_job_completes(prefect_server, app):
    with app.client() as client:
        response = sign_up(client, "Ada@Example.com")

        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["Location"] == f"/users/{body['id']}"
        assert body["email"] == "ada@example.com"  # stored lower-cased
        # The answer comes once the user and its jobs are committed, before any is queued:
        # the app's dispatcher queues them outside the request.
        assert body["jobs"] == [{"kind": k, "status": "not_queued", "attempts": 0} for k in KINDS]
        token = body["token"]
        assert len(token) >= 40

        user = wait_for_jobs(client, response)
        inbox = client.get("/fake-mail/messages", params={"to": "ada@example.com"}).json()

    assert {job["kind"]: job["status"] for job in user["jobs"]} == dict.fromkeys(KINDS, "completed")
    assert {job["kind"]: job["attempts"] for job in user["jobs"]} == {
        "welcome_email": 2,  # the mail provider lost its first answer
        "workspace": 1,
        "crm": 1,
    }

    # The database: the user (with a hash of its token, never the token), a job per kind
    # with its run id, one workspace.
    user_hex = uuid.UUID(body["id"]).hex
    assert app.rows("SELECT id, email, name, token_hash FROM users WHERE id = :u", u=user_hex) == [
        (user_hex, "ada@example.com", "Ada Lovelace", hashlib.sha256(token.encode()).hexdigest())
    ]
    runs = job_runs(app, body["id"])
    assert sorted(runs) == sorted(KINDS)
    assert app.rows("SELECT user_id, name FROM workspaces WHERE user_id = :u", u=user_hex) == [
        (user_hex, "Ada Lovelace's workspace")
    ]

    # Prefect: each job is a background task run, completed.
    for kind, run_id in runs.items():
        run = prefect_server.task_run(run_id)
        assert run["state"]["type"] == "COMPLETED"
        assert run["flow_run_id"] is None
        assert run["task_key"].startswith(f"{TASK_NAMES[kind]}-")
    plain = ["Scheduled", "Pending", "Running", "Completed"]
    assert prefect_server.state_names(runs["workspace"]) == plain
    assert prefect_server.state_names(runs["crm"]) == plain
    assert prefect_server.state_names(runs["welcome_email"]) == [
        *("Scheduled", "Pending", "Running", "AwaitingRetry", "Retrying", "Completed")
    ]
    assert prefect_server.task_run(runs["welcome_email"])["run_count"] == 2
    assert prefect_server.result(runs["crm"]) == "ada@example.com"

    # Two requests reached the mail provider with the same key: one email exists.
    assert len(inbox) == 1, inbox
    assert inbox[0]["requests"] == 2
    assert inbox[0]["subject"] == "Welcome!"
    assert inbox[0]["text"] == "Hi Ada Lovelace, welcome!"
    assert prefect_server.result(runs["welcome_email"]) == inbox[0]["id"]


def test_a_job_whose_new_state_is_not_written_yet_reads_as_that_state(prefect_server, app):
    """On SQLite the server records a run's new state in two writes; in between, the run has
    no state, but its state_type already names the new one, and read_user answers from it.
    Here the gap is held open: no Completed state is written until the block ends."""
    with app.client() as client:
        with prefect_server.states_held_back("NEW.type = 'COMPLETED'"):
            response = sign_up(client, "hedy@example.com", name="Hedy Lamarr")
            assert response.status_code == 201, response.text
            runs = job_runs(app, response.json()["id"])
            wait_for(
                lambda: [prefect_server.task_run(run_id) for run_id in runs.values()],
                lambda read: all(run["state_type"] == "COMPLETED" for run in read),
                timeout=60,
                what="the task server to report every job Completed",
            )
            assert all(prefect_server.task_run(r)["state"] is None for r in runs.values())

            user = read_user(client, response).raise_for_status().json()
            assert {job["kind"]: job["status"] for job in user["jobs"]} == dict.fromkeys(
                KINDS, "completed"
            )
        # Once the server writes the states (on its next try), the runs have them too.
        wait_for_runs(prefect_server, list(runs.values()))


# Submits the step's tasks again, as a re-queued job would: arguments "task_name:user_id".
RESUBMIT = """
import sys, uuid
sys.path.insert(0, sys.argv[1])
import tasks
for arg in sys.argv[2:]:
    name, user_id = arg.split(":")
    print("run", getattr(tasks, name).delay(uuid.UUID(user_id)).task_run_id, flush=True)
"""


def test_duplicates_never_do_anything_twice(prefect_server, app, started):
    with app.client() as client:
        response = sign_up(client, "Grace@Example.com", "Grace Hopper")
        assert response.status_code == 201, response.text
        user_id = response.json()["id"]
        wait_for_jobs(client, response)
        first = job_runs(app, user_id)

        # The same address, in other letters: 409, and nothing written or queued.
        runs_before = task_run_count(prefect_server)
        again = sign_up(client, "grace@EXAMPLE.com", "Someone Else")
        assert again.status_code == 409
        assert again.json() == {"detail": "an account with this email already exists"}
        assert "Location" not in again.headers
        assert task_run_count(prefect_server) == runs_before
        graces = app.rows("SELECT id, name FROM users WHERE email LIKE 'grace@%'")
        assert graces == [(uuid.UUID(user_id).hex, "Grace Hopper")]
        assert (
            len(app.rows("SELECT id FROM jobs WHERE user_id = :u", u=uuid.UUID(user_id).hex)) == 3
        )

        # The API reads runs only through a user's own jobs: a run id is no user id.
        assert client.get(f"/users/{first['crm']}").status_code == 404

        # A user with no workspace yet, for two workspace runs queued at the same moment.
        racer = uuid.uuid4()
        app.rows(
            "INSERT INTO users (id, email, name, token_hash, created_at)"
            " VALUES (:id, 'alan@example.com', 'Alan', '', CURRENT_TIMESTAMP)",
            id=racer.hex,
        )

        # The same tasks delivered again (a re-queued job): their effects are not repeated.
        env = {**prefect_server.env, "SIGNUP_DATABASE_URL": app.db, "API_URL": app.url}
        argv = [sys.executable, "-c", RESUBMIT, str(STEP)]
        argv += [f"send_welcome_email:{user_id}", f"set_up_workspace:{user_id}"]
        argv += [f"set_up_workspace:{racer}"] * 2
        started.append(resubmit := Process("resubmit", argv, env=env, echo=False))
        assert resubmit.wait(timeout=60) == 0, resubmit.output
        run_ids = re.findall(r"^run (\S+)$", resubmit.output, re.M)
        email_run, workspace_run, *racing_runs = run_ids
        wait_for_runs(prefect_server, run_ids)

        inbox = client.get("/fake-mail/messages", params={"to": "grace@example.com"}).json()

    # Both duplicates ran their bodies (not Cached) and completed on the first attempt...
    for run_id in (email_run, workspace_run):
        assert prefect_server.state_names(run_id) == [
            *("Scheduled", "Pending", "Running", "Completed")
        ]
    # ...returning what the first runs made, without making it again.
    assert prefect_server.result(email_run) == prefect_server.result(first["welcome_email"])
    assert prefect_server.result(workspace_run) == prefect_server.result(first["workspace"])
    assert len(inbox) == 1, inbox
    assert inbox[0]["requests"] == 3  # lost answer, retry, duplicate: one email

    # Two runs at once for a user without a workspace: one workspace, and both runs report it.
    # Both usually look before either inserts (each takes 2 s in between); then the unique
    # constraint fails one attempt and its retry finds the other's workspace.
    assert [prefect_server.task_run(r)["state"]["type"] for r in racing_runs] == ["COMPLETED"] * 2
    (workspace_id,) = app.rows("SELECT id FROM workspaces WHERE user_id = :u", u=racer.hex)[0]
    assert [prefect_server.result(r) for r in racing_runs] == [str(uuid.UUID(workspace_id))] * 2
    grace = app.rows("SELECT id FROM workspaces WHERE user_id = :u", u=uuid.UUID(user_id).hex)
    assert len(grace) == 1  # the duplicate run found it


def test_an_address_with_url_characters_updates_its_own_crm_contact(prefect_server, app):
    # Valid addresses, each with a character that means something in a URL.
    emails = ["x?y@example.com", "c#d@example.com", "a/b@example.com"]
    with app.client() as client:
        signups = [sign_up(client, email, "Tricky") for email in emails]
        for response in signups:
            assert response.status_code == 201, response.text
            user = wait_for_jobs(client, response)
            assert [job["status"] for job in user["jobs"]] == ["completed"] * 3

        for email in emails:
            contact = client.get(f"/fake-crm/contacts/{quote(email, safe='@')}")
            assert contact.status_code == 200, (email, contact.text)
            assert contact.json()["email"] == email
        # Unquoted, the first would have updated contact "x", the second contact "c".
        assert client.get("/fake-crm/contacts/x").status_code == 404
        assert client.get("/fake-crm/contacts/c").status_code == 404

    for response, email in zip(signups, emails, strict=True):
        assert prefect_server.result(job_runs(app, response.json()["id"])["crm"]) == email


BROWSER_ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_a_person_signs_up_in_the_browser_and_sees_every_job_complete(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS
        )
        try:
            page = browser.new_page()
            page.goto(app.url)
            page.get_by_placeholder("Your name").fill("Katherine Johnson")
            page.get_by_placeholder("you@example.com").fill("katherine@example.com")
            page.get_by_role("button", name="Sign up").click()

            # POST /users answers in well under a second; the rest of the 10 s is for a
            # cold browser on a busy machine, about as long as a person would wait.
            expect(page.locator("#message")).to_have_text(
                "Welcome, Katherine Johnson! Your account is ready; we are setting up the rest.",
                timeout=10_000,
            )
            expect(page.locator("#jobs li")).to_have_count(3)
            for kind in KINDS:
                job = page.locator(f'#jobs li[data-kind="{kind}"]')
                expect(job).to_have_attribute("data-status", "completed", timeout=60_000)
            expect(page.locator('#jobs li[data-kind="welcome_email"] .status')).to_have_text(
                "completed (attempt 2)"
            )
            expect(page.locator("#inbox")).to_have_text(
                'Inbox of katherine@example.com: "Welcome!"', timeout=10_000
            )

            # The same address again: the page shows the 409's message.
            page.get_by_role("button", name="Sign up").click()
            expect(page.locator("#message")).to_have_text(
                "an account with this email already exists"
            )
            expect(page.locator("#message")).to_have_class("error")
        finally:
            browser.close()


def test_submit_signs_up_watches_the_jobs_and_is_refused_the_second_time(prefect_server, app):
    users_before = len(app.rows("SELECT id FROM users"))
    # Twice against the same database: each run signs up a fresh address.
    for _ in range(2):
        submit = prefect_server.run_script(STEP / "submit.py", API_URL=app.url)
        assert submit.code == 0, submit.output
        out = submit.output.splitlines()
        location = re.fullmatch(r"POST /users -> 201 Location: /users/([0-9a-f-]{36})", out[0])
        assert location, submit.output
        assert re.fullmatch(r"  jobs: welcome_email \w+, workspace \w+, crm \w+", out[1])
        assert "  welcome_email: completed after 2 attempt(s)" in out
        assert "  workspace: completed after 1 attempt(s)" in out
        assert "  crm: completed after 1 attempt(s)" in out
        email = re.search(r"^(\S+) got 1 email\(s\) for 2 requests$", submit.output, re.M)
        assert email, submit.output
        assert (
            f"POST /users with {email.group(1).upper()} -> 409"
            " an account with this email already exists"
        ) in out
        # What it printed is what the app recorded: every job queued and completed in Prefect.
        for run_id in job_runs(app, location.group(1)).values():
            assert prefect_server.task_run(run_id)["state"]["type"] == "COMPLETED"
    assert len(app.rows("SELECT id FROM users")) == users_before + 2
