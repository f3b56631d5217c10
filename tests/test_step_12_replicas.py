"""Step 12 with two Prefect API processes (API_REPLICAS=2): HAProxy in front of them for the
app, the reconciler and any command; the task servers of each replica connected to it
directly, so that every replica that queues a run has task servers for it."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import clean_env, wait_for
from test_step_12 import (  # noqa: F401 (stack_dir: a fixture)
    STEP,
    assert_all_stopped,
    load_stack,
    processes_naming,
    stack_dir,
    stack_env,
)

from tutorial.runner import Process

pytestmark = pytest.mark.skipif(
    not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists())
    or not shutil.which("redis-server")
    or not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
    reason="needs haproxy, redis-server and PostgreSQL (Debian packages; .ci/run installs them)",
)
TEXT = "The new version is faster. It starts in half the time and uses less memory."
# The reconciler's timing (step 11's recover.py reads them from its environment): a run
# Scheduled or in flight with no news for 10 s may be lost; a pass every 2 s.
RECONCILER = {
    "RECOVER_SCHEDULED_AFTER": "10",
    "RECOVER_RUNNING_AFTER": "10",
    "RECOVER_INTERVAL": "2",
}
# One run at a time per task server: a burst of jobs leaves runs waiting in each replica's
# queue, where a killed replica loses them.
REQUEUED = r"recover - (\S+): re-enqueued \("  # the reconciler's line for each run it puts back
SETTINGS = {"API_REPLICAS": "2", "TASK_SERVER_LIMIT": "1", **RECONCILER}


def task_servers_of(api: str, auth) -> int:
    """The task servers subscribed to one API process, asked directly (a list in its
    memory); -1 while it does not answer."""
    try:
        response = httpx.post(f"{api}/task_workers/filter", json={}, auth=auth, timeout=10)
    except httpx.TransportError:
        return -1
    return len(response.json()) if response.is_success else -1


def test_the_stack_starts_a_killed_api_process_again(stack_dir):  # noqa: F811
    """stack.py with no command, as a user keeps it up: an API process that dies is started
    again and its task servers come back to it; SIGTERM still stops everything. (First in
    this module: the other tests' stack is up from their first test to the module's end.)"""
    env = stack_env(stack_dir, API_REPLICAS="2", TASK_SERVERS="1")
    stack = Process("stack", [sys.executable, str(STEP / "stack.py")], env=env, echo=False)
    try:
        stack.wait_for_line(r"^stack: Ctrl\+C stops it all$", timeout=300)
        started = r"^stack: started prefect-server-2 \(pid (\d+)\)$"
        (killed,) = re.findall(started, stack.output, re.M)
        api = re.search(r"^stack: prefect-server-2 ready at (\S+)$", stack.output, re.M)[1]
        secrets = json.loads((stack_dir / "secrets.json").read_text())
        auth = tuple(secrets["auth_string"].split(":", 1))
        task_servers = functools.partial(task_servers_of, api, auth)
        assert task_servers() == 1
        os.kill(int(killed), signal.SIGKILL)

        stack.wait_for_line(r"^stack: prefect-server-2 exited; starting it again$", timeout=30)
        wait_for(
            lambda: re.findall(started, stack.output, re.M), lambda p: len(p) == 2, timeout=180
        )
        again = re.findall(started, stack.output, re.M)[1]
        assert again != killed
        wait_for(
            lambda: stack.output.count("stack: prefect-server-2 ready at"),
            lambda n: n == 2,
            timeout=180,
        )
        wait_for(task_servers, lambda n: n == 1, timeout=120, what="its task server back")
        assert stack.running()
        assert "stopping everything" not in stack.output
    finally:
        stack.stop(grace=90)
    assert "stack: stopped prefect-server-2" in stack.output
    assert_all_stopped(stack_dir)


class Unavailable(http.server.BaseHTTPRequestHandler):
    """What a balancer answers when no API process is up for a route."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


def test_a_task_server_answered_503_exits_so_it_connects_to_its_api_process_directly(tmp_path):
    """Why task servers do not subscribe through the balancer: the subscription tries again
    after a refused or closed connection only. A 503 (a balancer with no live API process
    for the route) ends serve() with an error, and the task server exits."""
    balancer = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=balancer.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{balancer.server_address[1]}/api"
        env = clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "home"))
        done = subprocess.run(
            [sys.executable, str(STEP / "task_server.py")],
            cwd=STEP,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        balancer.shutdown()
        balancer.server_close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "InvalidStatus: server rejected WebSocket connection: HTTP 503" in done.stderr


@pytest.fixture(scope="module")
def replicas() -> Iterator:
    """stack.py's Stack with API_REPLICAS=2, started in this process (its services are real
    processes), so that a test can start a killed replica again (`Stack.restart`)."""
    state = Path(tempfile.mkdtemp(prefix="prefect-step12-replicas-"))
    state.chmod(0o755)  # PostgreSQL's user may enter: its database lives in it
    saved = {name: os.environ.get(name) for name in SETTINGS}
    os.environ.update(SETTINGS)  # read by stack.py, and passed on to the processes it starts
    stack = None
    try:
        module = load_stack(state)
        assert module.API_REPLICAS == 2
        stack = module.Stack()
        stack.up()
        yield stack
    finally:
        try:
            if stack is not None:
                stack.down()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            for pid in processes_naming(str(state)):  # anything a failure left behind
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(state, ignore_errors=True)


class Clients:
    """The app and the Prefect API, both reached as a client would: through the balancer."""

    def __init__(self, stack) -> None:
        self.stack = stack
        env = stack.client_env("test")
        auth = tuple(stack.secrets["auth_string"].split(":", 1))
        self.prefect = httpx.Client(base_url=env["PREFECT_API_URL"], auth=auth, timeout=30)
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        self.app = httpx.Client(base_url=env["API_URL"], headers=headers, timeout=30)
        self.logs = Path(env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]).parent / "logs"

    def post_job(self, n: int) -> str:
        """POST /jobs; on a 503 (the app could not reach Prefect), again with the same key."""
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        document = {"title": f"Document {n}", "text": TEXT}
        deadline = time.monotonic() + 120
        while (
            response := self.app.post("/jobs", json=document, headers=headers)
        ).status_code == 503:
            assert time.monotonic() < deadline, response.text
            time.sleep(1)
        assert response.status_code == 202, response.text
        # A client looks at its job once. (Round robin counts requests: without this read,
        # the app's two requests per submission sent every submission to the same replica.)
        self.app.get(response.headers["Location"]).raise_for_status()
        return response.json()["id"]

    def state(self, run_id: str) -> str | None:
        """The run's state: its type, and its name where they differ (COMPLETED/Cached)."""
        state = self.prefect.get(f"/task_runs/{run_id}").raise_for_status().json()["state"]
        if state is None:
            return None
        name = state["name"].upper()
        return state["type"] if name == state["type"] else f"{state['type']}/{state['name']}"

    def all_completed(self, run_ids: list[str], timeout: float) -> None:
        def not_completed() -> list[str]:
            return [run for run in run_ids if not self.state(run).startswith("COMPLETED")]

        wait_for(not_completed, lambda left: not left, timeout=timeout, interval=1)

    def runnings(self, run_id: str) -> int:
        """How many times the run started: Running states in its history."""
        states = self.prefect.get("/task_run_states/", params={"task_run_id": run_id}).json()
        return sum(state["type"] == "RUNNING" for state in states)

    def twice(self, run_ids: list[str]) -> dict[str, list[str]]:
        """The runs that did not start exactly once, each with its states, its events and the log
        lines that name it: what a failure needs to tell a double delivery from a re-enqueue."""
        found = {}
        for run in run_ids:
            states = self.prefect.get("/task_run_states/", params={"task_run_id": run}).json()
            if sum(state["type"] == "RUNNING" for state in states) != 1:
                body = {"filter": {"resource": {"id": [f"prefect.task-run.{run}"]}}, "limit": 50}
                events = self.prefect.post("/events/filter", json=body).json()["events"]
                found[run] = (
                    [f"state {state['timestamp']} {state['name']}" for state in states]
                    + [f"event {e['occurred']} in {e['received']} {e['event']}" for e in events]
                    + [
                        f"{log.name}: {line}"
                        for log in sorted(self.logs.glob("*.log"))
                        for line in log.read_text().splitlines()
                        if run in line and not log.name.startswith("haproxy")
                    ]
                )
        if found:  # the services' complaints, if any (the task-run recorder writes states)
            log = (self.logs / "prefect-services.log").read_text().splitlines()
            complaints = [line for line in log if "ERROR" in line or "WARN" in line]
            found["prefect-services.log"] = complaints[:40]
        return found

    def log_sizes(self) -> dict[str, int]:
        """Where each task server's log ends now: bodies_since() reads what comes after."""
        return {log.name: log.stat().st_size for log in self.logs.glob("task-server*.log")}

    def bodies_since(self, sizes: dict[str, int]) -> Counter:
        """How many times each document's body ran to its end since `sizes`: the line that
        score_document prints, counted in every task server's log (its states may say more)."""
        bodies = Counter()
        for log in self.logs.glob("task-server*.log"):
            with log.open() as text:
                text.seek(sizes.get(log.name, 0))
                bodies.update(re.findall(r"Scored 'Document (\d+)'", text.read()))
        return bodies

    def unfinished(self) -> list[dict]:
        body = {"task_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}}}
        return self.prefect.post("/task_runs/filter", json=body).raise_for_status().json()

    def posts_by_replica(self) -> Counter:
        """HAProxy's log: which replica answered each submission."""
        log = (self.logs / "haproxy.log").read_text()
        return Counter(re.findall(r" replicas/(prefect-\d) .* 201 .*\"POST /api/task_runs/ ", log))

    def received_by_replica(self) -> Counter:
        """The task servers' logs: the runs each replica's task servers received."""
        return Counter(
            {
                f"prefect-{n}": sum(
                    log.read_text().count("Received task run")
                    for log in self.logs.glob(f"task-server-{n}-*.log")
                )
                for n in (1, 2)
            }
        )

    def task_servers(self, replica: int) -> int:
        api = f"http://127.0.0.1:{self.stack.ports[f'prefect-{replica}']}/api"
        return task_servers_of(api, self.prefect.auth)


def balancer_stats(stack) -> dict[str, dict[str, str]]:
    """HAProxy's statistics page as CSV: one row per replica, by its name."""
    csv = httpx.get(f"http://127.0.0.1:{stack.ports['balancer-stats']}/;csv").text
    header, *rows = csv.lstrip("# ").splitlines()
    rows = [dict(zip(header.split(","), row.split(","), strict=False)) for row in rows]
    return {row["svname"]: row for row in rows if row["pxname"] == "replicas"}


def test_jobs_through_the_balancer_run_once_on_both_api_processes(replicas):
    clients = Clients(replicas)
    # Each replica has its own task servers, connected to it directly.
    assert (clients.task_servers(1), clients.task_servers(2)) == (2, 2)

    run_ids = [clients.post_job(n) for n in range(12)]
    clients.all_completed(run_ids, timeout=180)

    # 0 lost, 0 run twice.
    assert not (twice := clients.twice(run_ids)), json.dumps(twice, indent=1)
    # The balancer sent submissions to both replicas, and each replica's runs went to its own
    # task servers: the balancer's count per replica is what that replica's task servers got.
    posts = wait_for(clients.posts_by_replica, lambda c: c.total() == len(run_ids), timeout=30)
    assert posts["prefect-1"] and posts["prefect-2"], posts
    assert clients.received_by_replica() == posts
    stats = balancer_stats(replicas)
    assert {stats[name]["status"] for name in ("prefect-1", "prefect-2")} == {"UP"}
    assert all(int(stats[name]["hrsp_2xx"]) > 0 for name in ("prefect-1", "prefect-2")), stats
    assert clients.unfinished() == []
    print(f"submissions per replica: {dict(posts)}")


def test_an_event_subscription_through_the_balancer_hears_both_api_processes(replicas):
    """A websocket subscription to events (`/events/out`, what `prefect events stream` and
    automations use) goes through HAProxy to one API process, and hears the runs of both:
    each task server reports to its own process, and every process streams every event from
    Redis."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    clients = Clients(replicas)
    before = clients.posts_by_replica()

    async def completed_events_of_new_jobs() -> tuple[list[str], set[str]]:
        only = EventFilter(event=EventNameFilter(name=["prefect.task-run.Completed"]))
        heard: set[str] = set()
        # No reconnection: a dropped connection fails the test rather than replaying events
        # from the backfill, so the events heard came live over one connection.
        async with get_events_subscriber(filter=only, reconnection_attempts=0) as subscriber:
            # Subscribed: now the jobs (each run's id is its job's id).
            jobs = [await asyncio.to_thread(clients.post_job, n) for n in range(6)]
            async with asyncio.timeout(180):
                async for event in subscriber:
                    heard.add(event.resource.id.removeprefix("prefect.task-run."))
                    if set(jobs) <= heard:
                        break
        return jobs, heard

    settings = {
        PREFECT_API_URL: str(clients.prefect.base_url).rstrip("/"),
        PREFECT_API_AUTH_STRING: replicas.secrets["auth_string"],
    }
    with temporary_settings(settings):
        jobs, heard = asyncio.run(completed_events_of_new_jobs())

    assert set(jobs) <= heard
    # The jobs were queued by both processes: the one subscription heard both.
    posts = wait_for(
        lambda: clients.posts_by_replica() - before, lambda c: c.total() == len(jobs), timeout=30
    )
    assert posts["prefect-1"] and posts["prefect-2"], posts
    # That connection went through HAProxy, which logs a websocket once it has closed.
    opened = wait_for(
        lambda: re.findall(
            r" replicas/prefect-\d .*\"GET /api/events/out ",
            (clients.logs / "haproxy.log").read_text(),
        ),
        timeout=30,
        what="HAProxy has not logged the subscription",
    )
    assert len(opened) == 1, opened


def test_a_killed_api_process_strands_nothing(replicas):
    """SIGKILL replica 2 while jobs flow: the reconciler, through the balancer, puts back the
    runs that waited in its memory; then replica 2 starts again and takes its share."""
    clients = Clients(replicas)
    recover_log = clients.logs / "recover.log"
    requeued_before = len(re.findall(REQUEUED, recover_log.read_text()))

    sizes = clients.log_sizes()
    # A burst: with one run at a time per task server, most wait in the replicas' queues.
    burst = [clients.post_job(n) for n in range(24)]
    server_2 = dict(replicas.processes)["prefect-server-2"]
    server_2.send_signal(signal.SIGKILL)
    server_2.wait(timeout=30)
    killed_at = time.monotonic()
    at_the_kill = {run: clients.state(run) for run in burst}
    # Jobs keep coming; the balancer takes replica 2 out of the rotation (health check).
    after = [clients.post_job(n) for n in range(24, 36)]
    wait_for(
        lambda: balancer_stats(replicas)["prefect-2"]["status"],
        lambda status: status.startswith("DOWN"),
        timeout=30,
    )

    clients.all_completed(burst + after, timeout=300)
    recovered_in = time.monotonic() - killed_at
    log = recover_log.read_text()
    requeued = set(re.findall(REQUEUED, log)[requeued_before:])
    runnings = {run: clients.runnings(run) for run in burst + after}
    final = {run: clients.state(run) for run in burst + after}
    print(
        f"all completed {recovered_in:.0f} s after the kill; at the kill: "
        f"{dict(Counter(at_the_kill.values()))}; re-enqueued: {len(requeued)};"
        f" final: {dict(Counter(final.values()))}"
    )
    # Replica 2 held runs, and the reconciler put them back through the balancer.
    assert requeued, log
    assert requeued <= set(burst)
    assert all(final[run].startswith("COMPLETED") for run in requeued), final
    # A run the reconciler did not touch ran once.
    assert all(runnings[run] == 1 for run in runnings if run not in requeued), runnings
    assert all(final[run] == "COMPLETED" for run in final if run not in requeued), final
    # Runs that only waited in replica 2's queue ran once, after the reconciler's re-enqueue.
    waited = {run for run in requeued if final[run] == "COMPLETED"}
    assert all(runnings[run] == 1 for run in waited), runnings
    # Runs that replica 2's task servers were running when it died: they finished them, but
    # the events that carry a run's states went to replica 2 and were dropped ("EventsWorker
    # failed to process item"), so the API still said Scheduled and the reconciler put them
    # back. The second delivery found the result the first one wrote (the task's cache key
    # is its inputs, its code and the run's id) and ended Cached: the body did not run again.
    assert {run for run in requeued if final[run] != "COMPLETED"} <= {
        run for run in requeued if final[run] == "COMPLETED/Cached"
    }
    # 0 lost, 0 run twice: every job's body ran to its end exactly once.
    bodies = wait_for(
        lambda: clients.bodies_since(sizes),
        lambda bodies: bodies.total() >= 36,
        timeout=30,
        what="the task servers' logs do not show every job's body",
    )
    assert bodies == Counter({str(n): 1 for n in range(36)}), bodies

    # Replica 2 starts again; its task servers reconnect on their own.
    replicas.restart("prefect-server-2")
    wait_for(lambda: clients.task_servers(2), lambda n: n == 2, timeout=120)
    wait_for(
        lambda: balancer_stats(replicas)["prefect-2"]["status"], lambda s: s == "UP", timeout=30
    )
    before = clients.posts_by_replica()
    again = [clients.post_job(n) for n in range(36, 48)]
    clients.all_completed(again, timeout=180)
    assert not (twice := clients.twice(again)), json.dumps(twice, indent=1)
    bodies = wait_for(lambda: clients.bodies_since(sizes), lambda b: b.total() >= 48, timeout=30)
    assert bodies == Counter({str(n): 1 for n in range(48)}), bodies
    posts = wait_for(
        lambda: clients.posts_by_replica() - before, lambda c: c.total() == len(again), timeout=30
    )
    assert posts["prefect-1"] and posts["prefect-2"], posts
    # Nothing stranded: no run left waiting or in flight, through the balancer.
    wait_for(clients.unfinished, lambda runs: runs == [], timeout=60)
    final = {run: clients.state(run) for run in again}
    assert set(final.values()) == {"COMPLETED"}, final
    print(json.dumps({"after restart": dict(posts)}))
