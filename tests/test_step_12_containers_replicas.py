"""Step 12's compose.replicas.yaml on top of compose.yaml, run for real with podman: two
Prefect API processes and one services process on the same PostgreSQL and Redis, HAProxy in
front of them for the app and the reconciler, and the task servers of each API process
connected to it directly. Jobs through the app run once on both API processes; one API
process is killed while jobs flow, nothing is stranded, and its restart policy brings it
back. (The images and the helpers are test_step_12_containers.py's.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import wait_for
from test_step_12_containers import (
    PODMAN,
    TEXT,
    Stack,
    compose_up,
    logs_of_a_failure,  # noqa: F401 (an autouse fixture: each container's log on a failure)
    podman,
    pytestmark,  # noqa: F401 (the same conditions: podman as root, runc, a base image)
)

# One run at a time per task server, so that a burst of jobs waits in the API processes'
# queues, where a killed process loses them; the reconciler acts after 10 s without news.
SETTINGS = {
    "TASK_SERVER_LIMIT": "1",
    "RECOVER_SCHEDULED_AFTER": "10",
    "RECOVER_RUNNING_AFTER": "10",
    "RECOVER_INTERVAL": "2",
}
REQUEUED = re.compile(r"([0-9a-f-]{36}): re-enqueued")  # the reconciler's line for each run
POSTED = re.compile(r" replicas/(prefect-\d) .* 201 .*\"POST /api/task_runs/ ")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with compose_up("compose.yaml", "compose.replicas.yaml", **SETTINGS) as stack:
        yield stack


def inside(container: str, path: str) -> list | dict | None:
    """POST {} to an API process's own port, from inside its container: the API processes
    are reached from outside through the balancer only. None while it does not answer."""
    script = (
        "import base64, os, urllib.request\n"
        "auth = base64.b64encode(os.environ['PREFECT_SERVER_API_AUTH_STRING'].encode())\n"
        f"request = urllib.request.Request('http://localhost:4200/api{path}', data=b'{{}}',"
        " headers={'Authorization': 'Basic ' + auth.decode(),"
        " 'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(request, timeout=10).read().decode())\n"
    )
    argv = [PODMAN, "exec", container, ".venv/bin/python", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else None


def subscribed(stack: Stack, api_process: str) -> set[str] | None:
    """The task servers an API process holds in its memory, by container host name."""
    (container,) = stack.containers(api_process)
    workers = inside(container, "/task_workers/filter")
    return None if workers is None else {w["identifier"].rsplit("-", 1)[0] for w in workers}


def hostnames(stack: Stack, service: str) -> set[str]:
    return {stack.inspect(c, "{{.Config.Hostname}}") for c in stack.containers(service)}


def post_job(stack: Stack, n: int) -> str:
    """POST /jobs, then one look at the job, as a client does (round robin counts requests:
    with only the POST, the app's two requests per job may all reach the same process)."""
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    headers = {**auth, "Idempotency-Key": str(uuid.uuid4())}
    document = {"title": f"Document {n}", "text": TEXT}
    deadline = time.monotonic() + 120
    # 503: the app could not reach Prefect (an API process just died); again, same key.
    while (
        response := httpx.post(f"{stack.app_url}/jobs", json=document, headers=headers, timeout=30)
    ).status_code == 503:
        assert time.monotonic() < deadline, response.text
        time.sleep(1)
    assert response.status_code == 202, response.text
    httpx.get(f"{stack.app_url}{response.headers['Location']}", headers=auth, timeout=30)
    return response.json()["id"]


def runnings(stack: Stack, run: str) -> int:
    states = stack.prefect("GET", "/task_run_states/", params={"task_run_id": run}).json()
    return sum(state["type"] == "RUNNING" for state in states)


def final_states(stack: Stack, runs: list[str], timeout: float) -> dict[str, str]:
    """Wait until every run is Completed; its state's name (Completed, or Cached)."""

    def read() -> dict[str, str]:
        body = {"task_runs": {"id": {"any_": runs}}, "limit": 200}
        found = stack.prefect("POST", "/task_runs/filter", json=body).raise_for_status().json()
        return {r["id"]: r["state"] and f"{r['state']['type']}/{r['state']['name']}" for r in found}

    def done(states: dict[str, str]) -> bool:
        return len(states) == len(runs) and all(
            state and state.startswith("COMPLETED/") for state in states.values()
        )

    return wait_for(read, done, timeout=timeout, interval=1, what="runs not all completed")


def posts_by_process(stack: Stack) -> Counter:
    """The balancer's log: which API process queued each run."""
    (balancer,) = stack.containers("balancer")
    return Counter(POSTED.findall(stack.logs(balancer)))


def received(stack: Stack, service: str) -> list[str]:
    """The runs a service's task servers received, from their logs (one line per delivery)."""
    return [run for container in stack.containers(service) for run in stack.deliveries(container)]


def test_the_replicas_stack_comes_up_healthy(stack: Stack):
    counts = {
        "postgres": 1,
        "redis": 1,
        "prefect-server": 1,
        "prefect-server-2": 1,
        "prefect-services": 1,
        "balancer": 1,
        "task-server": 2,
        "task-server-2": 2,
        "app": 1,
        "recover": 1,
    }
    assert {service: len(stack.containers(service)) for service in counts} == counts
    for service in ("postgres", "redis", "prefect-server", "prefect-server-2", "app"):
        (container,) = stack.containers(service)
        wait_for(lambda c=container: stack.healthy(c), timeout=300, interval=2, what=container)
    # The balancer answers for the API processes; each holds its own task servers only.
    wait_for(lambda: stack.prefect("GET", "/health", auth=False).status_code, lambda s: s == 200)
    for api_process, service in (
        ("prefect-server", "task-server"),
        ("prefect-server-2", "task-server-2"),
    ):
        mine = hostnames(stack, service)
        wait_for(
            lambda a=api_process: subscribed(stack, a),
            lambda seen, m=mine: seen == m,
            timeout=120,
            what=f"{service} not subscribed to {api_process} alone",
        )
    assert all(stack.running(c) for c in stack.containers()), stack.containers()
    restarts = {c: stack.inspect(c, "{{.RestartCount}}") for c in stack.containers()}
    print(f"restarts while starting: {restarts}")


def jobs_run_once_on_both(stack: Stack, numbers: range) -> Counter:
    """Jobs through the app: each run once, both API processes queued some (the balancer's
    log), and each one's runs went to its own task servers. The runs per API process."""
    before = posts_by_process(stack)
    runs = [post_job(stack, n) for n in numbers]
    states = final_states(stack, runs, timeout=180)
    assert set(states.values()) == {"COMPLETED/Completed"}, states
    assert all(runnings(stack, run) == 1 for run in runs)
    posts = wait_for(
        lambda: posts_by_process(stack) - before, lambda c: c.total() == len(runs), timeout=30
    )
    assert posts["prefect-1"] and posts["prefect-2"], posts
    by_process = {
        "prefect-1": [run for run in received(stack, "task-server") if run in runs],
        "prefect-2": [run for run in received(stack, "task-server-2") if run in runs],
    }
    assert {name: len(taken) for name, taken in by_process.items()} == dict(posts)
    assert sorted(by_process["prefect-1"] + by_process["prefect-2"]) == sorted(runs)
    return posts


def test_jobs_through_the_balancer_run_once_on_both_api_processes(stack: Stack):
    posts = jobs_run_once_on_both(stack, range(12))
    print(f"runs queued per API process: {dict(posts)}")


def kill_the_process_in(container: str) -> None:
    """SIGKILL the program a container runs, as a crash or the kernel's OOM killer would: its
    init (PID 1, `init: true`) then exits with it, and the restart policy applies."""
    init = podman("inspect", "--format", "{{.State.Pid}}", container).strip()
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    assert len(children) == 1, children
    os.kill(int(children[0]), signal.SIGKILL)


def test_a_killed_api_process_strands_nothing_and_comes_back(stack: Stack):
    """SIGKILL API process 2 while jobs flow: the reconciler, through the balancer, puts back
    the runs that waited in its memory; its restart policy starts it again, its task servers
    reconnect, and it takes its share of new jobs."""
    (victim,) = stack.containers("prefect-server-2")
    (recover,) = stack.containers("recover")
    requeued_before = len(REQUEUED.findall(stack.logs(recover)))
    first_start = stack.inspect(victim, "{{.State.StartedAt}}")

    # A burst: with one run at a time per task server, most runs wait in the queues.
    burst = [post_job(stack, n) for n in range(24)]
    kill_the_process_in(victim)
    killed_at = time.monotonic()
    # Jobs keep coming: the balancer takes the dead process out of the rotation.
    after = [post_job(stack, n) for n in range(24, 32)]

    states = final_states(stack, burst + after, timeout=300)
    all_done = time.monotonic() - killed_at
    requeued = set(REQUEUED.findall(stack.logs(recover))[requeued_before:])
    started = {run: runnings(stack, run) for run in burst + after}
    print(
        f"all completed {all_done:.0f} s after the kill; re-enqueued {len(requeued)};"
        f" final: {dict(Counter(states.values()))}"
    )
    # API process 2 held runs, and the reconciler put them back.
    assert requeued and requeued <= set(burst), requeued
    # A run the reconciler did not touch ran once. A re-enqueued run either waited in the
    # killed process's queue (then it ran once, after the re-enqueue), or was in flight on
    # its task servers, which finished it but could not report its states: delivered again,
    # it found its own result and ended Cached, its body not run twice.
    assert all(started[run] == 1 for run in started if run not in requeued), started
    assert all(states[run] == "COMPLETED/Completed" for run in states if run not in requeued)
    for run in requeued:
        assert states[run] == "COMPLETED/Cached" or started[run] == 1, (run, states[run])

    # The restart policy started it again; its task servers came back to it.
    wait_for(
        lambda: stack.inspect(victim, "{{.State.StartedAt}}"),
        lambda at: at != first_start,
        timeout=60,
    )
    wait_for(lambda: stack.healthy(victim), timeout=180, interval=2, what=f"{victim} healthy")
    healthy = time.monotonic() - killed_at
    mine = hostnames(stack, "task-server-2")
    wait_for(
        lambda: subscribed(stack, "prefect-server-2"),
        lambda seen: seen == mine,
        timeout=120,
        what="task servers back on prefect-server-2",
    )
    print(
        f"{victim} healthy again {healthy:.0f} s after the kill; its task servers back"
        f" {time.monotonic() - killed_at:.0f} s after the kill"
    )
    jobs_run_once_on_both(stack, range(32, 44))
    # Nothing stranded: no run of any test waits or runs still.
    body = {"task_runs": {"state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}}}
    unfinished = stack.prefect("POST", "/task_runs/filter", json=body).raise_for_status().json()
    assert unfinished == [], unfinished


def test_down_leaves_nothing_behind(stack: Stack):
    down = stack.compose("down", "-v", "-t", "10")
    assert down.returncode == 0, down.stdout + down.stderr
    assert stack.left_behind() == {"containers": [], "volumes": [], "networks/pods": []}
