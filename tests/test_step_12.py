"""Step 12: the production topology (PostgreSQL, Redis, a Prefect server with an auth string,
two task servers, step 08's app, step 11's reconciler) started by one command, without
Docker; compose.yaml describes the same services for Docker."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from harness import UUID, clean_env, load_module, step_dir, wait_for

from tutorial.runner import ROOT, Process, free_port, wait_until_answering

STEP = step_dir(12)
JOBS = 6


def load_stack(state: Path):
    """stack.py as a module, with its state in `state`."""
    os.environ["STACK_DIR"] = str(state)
    try:
        return load_module(STEP / "stack.py", "stack_12")
    finally:
        del os.environ["STACK_DIR"]


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line or environment mention `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
                seen += os.readlink(entry / "cwd").encode()  # Redis names its folder nowhere else
            except OSError:
                continue
            if text.encode() in seen:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def stack_dir() -> Iterator[Path]:
    """The state folder of the stack the module's tests keep up (`running_stack`), in a
    folder PostgreSQL's user can reach, so its database lives in it."""
    state = Path(tempfile.mkdtemp(prefix="prefect-step12-"))
    state.chmod(0o755)
    try:
        yield state
    finally:
        pgdata = state / "postgres" / "data"
        if (pgdata / "postmaster.pid").exists():  # a test failed half-way: stop it anyway
            stack = load_stack(state)
            pg_ctl = [stack.postgres_tool("pg_ctl"), "-D", str(pgdata), "-m", "immediate"]
            subprocess.run([*stack.AS_POSTGRES, *pg_ctl, "-w", "stop"], check=False)
        for pid in processes_naming(str(state)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(state)


def stack_env(state: Path, **extra: str) -> dict[str, str]:
    return clean_env(STACK_DIR=str(state), PREFECT_SERVER_UI_ENABLED="false", **extra)


def assert_all_stopped(state: Path) -> None:
    assert processes_naming(str(state)) == []
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()


@pytest.fixture
def private_repo(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The repo's files in a folder only its owner may enter, like a clone in /root (mode
    700) in a container or on a fresh VM, and a temporary folder for its processes. Returns
    (repo, temporary folder)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    repo = home / "repo"
    ignore = shutil.ignore_patterns(".venv", "__pycache__", ".prefect", "*.db")
    shutil.copytree(ROOT / "tutorial", repo / "tutorial", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", repo)
    server_env = "tutorial/12_production/server/.venv"  # 150 MB: shared, not copied
    (repo / server_env).symlink_to(ROOT / server_env)
    scratch = Path(tempfile.mkdtemp(prefix="prefect-step12-tmp-"))
    scratch.chmod(0o755)  # like /tmp: every user may enter it
    try:
        yield repo, scratch
    finally:
        for pgdata in scratch.glob("*/data"):
            if (pgdata / "postmaster.pid").exists():  # a test failed half-way: stop it anyway
                stack = load_stack(repo / ".prefect" / "production")
                pg_ctl = [stack.postgres_tool("pg_ctl"), "-D", str(pgdata), "-m", "immediate"]
                subprocess.run([*stack.AS_POSTGRES, *pg_ctl, "-w", "stop"], check=False)
        for pid in processes_naming(str(repo)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(scratch)


def test_one_command_runs_jobs_through_the_app_on_two_task_servers(private_repo):
    """`uv run tutorial 12` from a repo in a private folder, with no setting: as root (a
    container, CI) PostgreSQL's user cannot enter it, so the database lives elsewhere."""
    repo, scratch = private_repo
    runner = Process(
        "tutorial",
        [sys.executable, str(repo / "tutorial" / "runner.py"), "12"],
        env=clean_env(PREFECT_SERVER_UI_ENABLED="false", JOBS=str(JOBS), TMPDIR=str(scratch)),
    )
    try:
        assert runner.wait(timeout=480) == 0, runner.output
    finally:
        runner.stop(grace=90)
    out = runner.output.splitlines()
    stack_dir = repo / ".prefect" / "production"

    assert "[stack] stack: 2 task servers subscribed" in out
    # submit.py prints each job as it ends: every one completed, with its score.
    jobs = [x for x in out if re.fullmatch(rf"\[stack\] /jobs/{UUID}: \w+ .*", x)]
    assert len(jobs) == JOBS, runner.output
    completed = r".*: completed \{'title': 'Document \d', 'words': 15, .*"
    assert all(re.fullmatch(completed, x) for x in jobs), jobs
    assert "[stack] without the auth string: 401 {'exception_message': 'Unauthorized'}" in out
    assert "Step 12 done. Its services are stopped; their logs: .prefect/production/logs" in out
    # The runner started no Prefect server of its own: the stack brought one.
    assert not any("Starting a local Prefect server" in line for line in out)

    # Each job went to one task server, once. Which one is timing (step 03's NOTES): a run
    # goes to whichever subscription polls the queue first, so one may take them all.
    received = [
        (stack_dir / "logs" / f"task-server-{n}.log").read_text().count("Received task run")
        for n in (1, 2)
    ]
    assert sum(received) == JOBS, received
    # Stopped in order, PostgreSQL last, and nothing left running.
    stops = [x for x in out if re.match(r"\[stack\] stack: (stopped|PostgreSQL stopped)", x)]
    assert stops[-1] == "[stack] stack: PostgreSQL stopped"
    assert processes_naming(str(repo)) == []
    elsewhere = re.search(r"this run's database is in (\S+), deleted on stop", runner.output)
    if os.geteuid() == 0:  # PostgreSQL ran as its own user, its database outside the repo
        assert elsewhere, runner.output
        assert Path(elsewhere[1]).parent == scratch
        assert not Path(elsewhere[1]).exists()
        assert "database system is shut down" in (stack_dir / "logs" / "postgres.log").read_text()
    else:  # PostgreSQL ran as this user, its database in the repo's .prefect/
        assert elsewhere is None
        assert (stack_dir / "postgres" / "data" / "PG_VERSION").exists()
    assert_all_stopped(stack_dir)


@pytest.fixture(scope="module")
def running_stack(stack_dir) -> Iterator[tuple[Process, dict[str, str]]]:
    """stack.py with no command: everything up until SIGTERM. Returns the process and the
    clients' settings it prints."""
    stack = Process("stack", [sys.executable, str(STEP / "stack.py")], env=stack_env(stack_dir))
    try:
        stack.wait_for_line(r"^stack: Ctrl\+C stops it all$", timeout=300)
        settings = dict(re.findall(r"^  (\w+)=(.+)$", stack.output, re.M))
        yield stack, settings
    finally:
        stack.stop(grace=90)


def test_clients_need_the_auth_string(running_stack, stack_dir):
    _, settings = running_stack
    api = settings["PREFECT_API_URL"]
    auth_string = json.loads((stack_dir / "secrets.json").read_text())["auth_string"]
    # A task server without the auth string, started first: it takes a while to import Prefect.
    env = clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(stack_dir / "homes" / "anonymous"))
    task_server = Process("anonymous", [sys.executable, str(STEP / "task_server.py")], env=env)
    try:
        # The stack prints where the secret is, not the secret.
        secret = f"(the auth_string in {stack_dir}/secrets.json)"
        assert settings["PREFECT_API_AUTH_STRING"] == secret

        # The health check stays open (for load balancers); everything else needs the auth
        # string.
        assert httpx.get(f"{api}/health").status_code == 200
        anonymous = httpx.post(f"{api}/task_runs/filter", json={})
        assert anonymous.status_code == 401
        assert anonymous.json() == {"exception_message": "Unauthorized"}
        wrong = httpx.post(f"{api}/task_runs/filter", json={}, auth=("prefect", "guess"))
        assert wrong.status_code == 401
        user, password = auth_string.split(":", 1)
        assert httpx.post(f"{api}/task_runs/filter", json={}, auth=(user, password)).is_success

        # The task server without it cannot subscribe, and says why.
        assert task_server.wait(timeout=120) == 1
    finally:
        task_server.stop()
    assert "Exception: Unable to authenticate to the subscription." in task_server.output


def test_parameters_and_results_live_in_the_shared_storage(running_stack, stack_dir):
    _, settings = running_stack
    # The app's key is in client.env only; the stack prints where it is.
    client_env = dict(line.split("=", 1) for line in (stack_dir / "client.env").read_text().split())
    assert settings["JOBS_API_KEY"] == f"(in {stack_dir}/client.env)"
    auth = {"Authorization": f"Bearer {client_env['JOBS_API_KEY']}"}
    with httpx.Client(base_url=settings["API_URL"], headers=auth, timeout=30) as app:
        document = {"title": "Notes", "text": "It is on the mat."}
        assert (
            app.post("/jobs", json=document, headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        response = app.post("/jobs", json=document)
        assert response.status_code == 202
        job_id = response.json()["id"]
        assert re.fullmatch(UUID, job_id)
        job = wait_for(
            lambda: app.get(f"/jobs/{job_id}").json(),
            lambda job: job["status"] == "completed",
            timeout=60,
            what="the job to complete",
        )

    storage = stack_dir / "storage"
    assert len(list((storage / "parameters").iterdir())) >= 1
    # The app (its own home) read the result the task server (another home) wrote.
    assert job["result"]["words"] == 5
    homes = stack_dir / "homes"
    assert not any((homes / name / "storage").exists() for name in ("app", "task-server-1"))


# Test helpers started early, to import Prefect while other processes start, and held at
# a gate (a file the test creates) until their moment comes.
AT_THE_GATE = """
import os, time
while not os.path.exists(os.environ["GATE"]):
    time.sleep(0.1)
"""

SUBMIT = """
import sys
from prefect.settings import PREFECT_API_URL, temporary_settings
sys.path.insert(0, "tutorial/12_production")
from tasks import Document, score_document
exec(sys.argv.pop(1))  # at the gate
for api in sys.argv[1:]:
    with temporary_settings({PREFECT_API_URL: api}):
        run = score_document.delay(Document(title="Notes", text="It is on the mat."))
    print(run.task_run_id)
"""

# The step's task_server.py, run once the gate opens.
TASK_SERVER_AFTER_GATE = """
import runpy, sys
import prefect.task_worker
exec(sys.argv[2])  # at the gate
sys.path.insert(0, "tutorial/12_production")
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def data_store_ports(stack: Process) -> dict[str, int]:
    """The ports of the stack's PostgreSQL and Redis, as its output announced them."""
    return {
        name: int(re.search(rf"^stack: {label} ready on 127.0.0.1:(\d+)$", stack.output, re.M)[1])
        for name, label in (("postgres", "PostgreSQL"), ("redis", "Redis"))
    }


def test_a_run_is_delivered_only_by_the_api_process_that_queued_it(
    running_stack, stack_dir, tmp_path
):
    """Two Prefect API processes on the same PostgreSQL and Redis: the task servers listen
    to A; a run submitted through B waits until a task server connects to B."""
    stack, settings = running_stack
    module = load_stack(stack_dir)
    # The stack's secrets and ports, to start a second API process with its settings.
    secrets = json.loads((stack_dir / "secrets.json").read_text())
    ports = data_store_ports(stack)
    port = free_port()
    api_a, api_b = settings["PREFECT_API_URL"], f"http://127.0.0.1:{port}/api"
    env = clean_env(
        **{
            **module.server_env(secrets, ports),
            "PREFECT_HOME": str(stack_dir / "homes" / "server-b"),
            "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
        }
    )
    python = str(STEP / "server" / ".venv" / "bin" / "python")
    argv = [python, "-m", "prefect", "server", "start", "--no-services", "--port", str(port)]
    server_b = Process("server-b", argv, env=env, echo=False)
    clients = clean_env(**{k: v for k, v in settings.items() if k.startswith("PREFECT_")})
    clients["PREFECT_API_AUTH_STRING"] = secrets["auth_string"]
    auth = tuple(secrets["auth_string"].split(":", 1))
    # Server B, the submitter and B's task server start together; the last two wait at
    # their gates until B answers and until B's run is shown to wait, respectively.
    submit_gate, serve_gate = tmp_path / "submit", tmp_path / "serve"
    argv = [sys.executable, "-c", SUBMIT, AT_THE_GATE, api_b, api_a]
    submit = Process("submit", argv, env={**clients, "GATE": str(submit_gate)}, echo=False)
    env_b = {**clients, "PREFECT_API_URL": api_b, "GATE": str(serve_gate)}
    argv = [sys.executable, "-c", TASK_SERVER_AFTER_GATE, str(STEP / "task_server.py")]
    task_server_b = Process("task-server-b", [*argv, AT_THE_GATE], env=env_b, echo=False)
    try:
        wait_until_answering(f"{api_b}/health", server_b, timeout=180)

        # One run through B, then one through A.
        submit_gate.touch()
        assert submit.wait(timeout=120) == 0, submit.output
        via_b, via_a = re.findall(rf"^({UUID})$", submit.output, re.M)

        def state(run_id: str) -> str:
            return httpx.get(f"{api_a}/task_runs/{run_id}", auth=auth).json()["state"]["name"]

        def task_servers(api: str) -> int:
            return len(httpx.post(f"{api}/task_workers/filter", json={}, auth=auth).json())

        wait_for(lambda: state(via_a), lambda name: name == "Completed", timeout=60)
        # A's task servers ran A's run; B's run, submitted first, is still in B's queue.
        assert state(via_b) == "Scheduled"
        assert (task_servers(api_a), task_servers(api_b)) == (2, 0)

        # A task server connected to B runs it.
        serve_gate.touch()

        def state_of_b_while_serving() -> str:
            assert task_server_b.running(), task_server_b.output
            return state(via_b)

        wait_for(state_of_b_while_serving, lambda name: name == "Completed", timeout=120)
    finally:
        for process in (task_server_b, submit, server_b):
            process.stop()


# Sends one event on a fresh connection, and keeps the connection open: closing it would
# make the server publish what it holds.
EMIT_ONE = """
import asyncio, sys
from prefect.events import Event
from prefect.events.clients import PrefectEventsClient

async def main():
    async with PrefectEventsClient(sys.argv[1]) as client:
        await client.emit(Event(event="test.one", resource={"prefect.resource.id": sys.argv[2]}))
        print("sent", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def seconds_until_in_redis(api: str, clients: dict, redis: list[str], timeout: float) -> float:
    """Send one event to the API process at `api`; how long until it is in Redis's stream of
    events, where the task-run recorder reads run states from."""
    resource = f"test.batching.{os.urandom(8).hex()}"
    argv = [sys.executable, "-c", EMIT_ONE, api, resource]
    emitter = Process("emit-one", argv, env=clients, echo=False)
    try:
        emitter.wait_for_line("^sent$", timeout=120)
        sent = time.monotonic()

        def published() -> bool:
            read = [*redis, "XREVRANGE", "events", "+", "-", "COUNT", "500"]
            return resource in subprocess.run(read, capture_output=True, text=True).stdout

        wait_for(published, bool, timeout=timeout, interval=0.1)
        return time.monotonic() - sent
    finally:
        emitter.stop()


def test_the_server_publishes_each_event_at_once_not_in_batches(running_stack, stack_dir):
    """prefect-redis's publisher holds the events of a connection until it has 5 of them or
    10 s have passed. Run states come from events: with that default a job read "running" for
    up to 8 s after it ended (median 4.7 s over 8 jobs). stack.py sets a batch of 1."""
    stack, settings = running_stack
    module = load_stack(stack_dir)
    secrets = json.loads((stack_dir / "secrets.json").read_text())
    ports = data_store_ports(stack)
    redis = ["redis-cli", "-h", "127.0.0.1", "-p", str(ports["redis"]), "--no-auth-warning"]
    redis += ["-a", secrets["redis_password"]]
    clients = clean_env(**{k: v for k, v in settings.items() if k.startswith("PREFECT_")})
    clients["PREFECT_API_AUTH_STRING"] = secrets["auth_string"]

    # The stack's API process: in Redis within a moment (deadline well under 10 s).
    at_once = seconds_until_in_redis(settings["PREFECT_API_URL"], clients, redis, timeout=5)

    # A second API process with the same settings but the default batching: the event waits
    # for the publisher's 10 s timer.
    port = free_port()
    env = {
        **module.server_env(secrets, ports),
        "PREFECT_HOME": str(stack_dir / "homes" / "server-batching"),
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    del env["PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE"]
    python = str(STEP / "server" / ".venv" / "bin" / "python")
    argv = [python, "-m", "prefect", "server", "start", "--no-services", "--port", str(port)]
    batching = Process("server-batching", argv, env=clean_env(**env), echo=False)
    try:
        api = f"http://127.0.0.1:{port}/api"
        wait_until_answering(f"{api}/health", batching, timeout=120)
        waited = seconds_until_in_redis(api, clients, redis, timeout=30)
    finally:
        batching.stop()
    print(f"one event reached Redis after {at_once:.2f} s (batch of 1), {waited:.2f} s (default)")
    assert 5 < waited < 15, waited


PROBE = """
from prefect import task
from prefect.settings import get_current_settings


@task
def settings_seen(n: int) -> dict:
    settings = get_current_settings()  # on the task server, inside the run
    return {"home": str(settings.home), "auth_string": settings.api.auth_string is not None}
"""

PROBE_SERVER = """
from prefect.task_worker import serve
from probe import settings_seen
serve(settings_seen)
"""

# Three ways to submit: .delay(); create_run with a client that has the auth string, from
# settings that do not; the lesson's way, a client made by hand in a process whose Prefect
# settings hold no API setting at all.
SUBMIT_PROBE = """
import asyncio, os, sys, time
from prefect.client.orchestration import PrefectClient, get_client
from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings
from probe import settings_seen


async def create_run(client):
    async with client:
        return await settings_seen.create_run(client=client, parameters={"n": 1}, deferred=True)


way = sys.argv[1]
gate = os.environ.get("GATE")  # wait there, if given one: see AT_THE_GATE
while gate and not os.path.exists(gate):
    time.sleep(0.1)
if way == "delay":
    print(settings_seen.delay(1).task_run_id)
elif way == "settings without the auth string":
    client = get_client()
    with temporary_settings(restore_defaults=[PREFECT_API_AUTH_STRING]):
        print(asyncio.run(create_run(client)).id)
else:
    url, auth_string = os.environ["APP_PREFECT_API_URL"], os.environ["APP_PREFECT_AUTH_STRING"]
    print(asyncio.run(create_run(PrefectClient(url, auth_string=auth_string))).id)
"""


def test_parameters_files_hold_the_submitters_settings_and_its_auth_string(
    running_stack, stack_dir, tmp_path
):
    """Each parameters file holds the submitter's whole settings context, the auth string in
    it, and the task server runs the task under those settings, not its own."""
    _, settings = running_stack
    api = settings["PREFECT_API_URL"]
    auth_string = json.loads((stack_dir / "secrets.json").read_text())["auth_string"]
    auth = tuple(auth_string.split(":", 1))
    storage = stack_dir / "storage"
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "probe_server.py").write_text(PROBE_SERVER)
    (tmp_path / "submit_probe.py").write_text(SUBMIT_PROBE)
    clients = clean_env(
        PREFECT_API_URL=api,
        PREFECT_API_AUTH_STRING=auth_string,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(storage),
        PYTHONPATH=str(tmp_path),
    )

    def submit(way: str, **env: str) -> subprocess.Popen:
        """Start the submitter in a folder with no Prefect settings file."""
        return subprocess.Popen(
            [sys.executable, "submit_probe.py", way],
            cwd=tmp_path,
            env={**env, "PREFECT_HOME": str(tmp_path / "submitter-home")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_id(submitter: subprocess.Popen) -> str:
        """What the submitter printed: the id of the run it created."""
        out, err = submitter.communicate(timeout=120)
        assert submitter.returncode == 0, err
        return out.split()[-1]

    def run(run_id: str) -> dict:
        return httpx.get(f"{api}/task_runs/{run_id}", auth=auth).json()

    def submitted(run_id: str) -> bytes:
        """The run's parameters file: JSON around a base64 pickle, decoded."""
        states = httpx.get(f"{api}/task_run_states/", params={"task_run_id": run_id}, auth=auth)
        (parameters_id,) = {s["state_details"]["task_parameters_id"] for s in states.json()} - {
            None
        }
        record = json.loads((storage / "parameters" / parameters_id).read_text())
        return base64.b64decode(record["result"])

    def submitted_settings(run_id: str) -> dict:
        """The settings in it, as the task server reads them."""
        return pickle.loads(submitted(run_id))["context"]["settings_context"]["settings"]

    def result(run_id: str) -> dict:
        state = wait_for(lambda: run(run_id)["state"], lambda s: s["type"] == "COMPLETED")
        record = json.loads(Path(state["data"]["storage_key"]).read_text())
        return pickle.loads(base64.b64decode(record["result"]))

    # The three submitters and a fresh task server start together. The submitter whose
    # settings lack the auth string goes first: its run must be the first the task server
    # gets (what fails is the version check a fresh one makes on its first run). The other
    # two wait at a gate.
    gate = tmp_path / "gate"
    own_client_env = {k: v for k, v in clients.items() if not k.startswith("PREFECT_API_")}
    submitters = {
        "no auth": submit("settings without the auth string", **clients),
        "delay": submit("delay", **clients, GATE=str(gate)),
        "own client": submit(
            "own client",
            **own_client_env,
            APP_PREFECT_API_URL=api,
            APP_PREFECT_AUTH_STRING=auth_string,
            GATE=str(gate),
        ),
    }
    task_server_env = {**clients, "PREFECT_HOME": str(tmp_path / "task-server-home")}
    probe = Process("probe", [sys.executable, "-m", "probe_server"], env=task_server_env)
    try:
        no_auth = run_id(submitters["no auth"])
        # The file holds no auth string, so the run has none on the task server: the
        # server answers 401 and the run stays Pending.
        assert submitted_settings(no_auth)["api"]["auth_string"] is None
        probe.wait_for_line(rf"Failed to submit task run UUID\('{no_auth}'\)", timeout=120)
        # The traceback that names the 401 follows that line, maybe a moment later.
        probe.wait_for_line("401 Unauthorized", timeout=30)
        wait_for(lambda: run(no_auth)["state"]["name"], lambda name: name == "Pending")

        gate.touch()
        delayed, own_client = run_id(submitters["delay"]), run_id(submitters["own client"])
        # .delay(): the auth string in the file, and the run sees the submitter's home.
        assert submitted_settings(delayed)["api"]["auth_string"] == auth_string
        assert result(delayed) == {"home": str(tmp_path / "submitter-home"), "auth_string": True}

        # A client made by hand, no Prefect API setting in the submitter: no API settings
        # in the file, so the task server uses its own, auth string included.
        assert "api" not in submitted_settings(own_client)
        assert result(own_client)["auth_string"] is True
        # In clear once decoded; and nowhere in the file of the lesson's way.
        assert auth_string.encode() in submitted(delayed)
        assert auth_string.encode() not in submitted(own_client)
    finally:
        probe.stop()
        for submitter in submitters.values():
            if submitter.poll() is None:  # a failed test: stop what still waits
                submitter.kill()
                submitter.communicate()
    # Only the stack's user may read the storage.
    assert storage.stat().st_mode & 0o777 == 0o700


def test_sigterm_stops_everything(running_stack, stack_dir):
    stack, _ = running_stack
    stack.popen.send_signal(signal.SIGTERM)
    assert stack.wait(timeout=120) == 0, stack.output
    assert stack.output.splitlines()[-1] == "stack: PostgreSQL stopped"
    assert_all_stopped(stack_dir)


# --- without a stack ------------------------------------------------------------------


def test_compose_runs_the_same_services_with_the_same_settings(tmp_path):
    compose = yaml.safe_load((STEP / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "prefect-server", "task-server", "app", "recover"} <= set(services)
    module = load_stack(tmp_path)  # its settings, without starting anything
    secrets = {"auth_string": "a:b", "postgres_password": "p", "redis_password": "r"}
    ports = {"postgres": 1, "redis": 2, "prefect": 3, "app": 4}
    server_settings = set(module.server_env(secrets, ports)) - {"PREFECT_HOME"}
    assert server_settings <= set(services["prefect-server"]["environment"])
    client_settings = set(module.client_env(secrets, ports, "x")) - {"PREFECT_HOME", "API_URL"}
    for name in ("task-server", "app", "recover"):
        assert client_settings <= set(services[name]["environment"]), name
    assert "tutorial/12_production/task_server.py" in " ".join(services["task-server"]["command"])
    assert "tutorial/11_reliability/recover.py" in " ".join(services["recover"]["command"])
    assert "tutorial/08_fastapi_jobs" in " ".join(services["app"]["command"])
    assert services["task-server"]["deploy"]["replicas"] == 2


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's `!reset` tag: the value of the file underneath is dropped."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def haproxy_sections(config: str) -> dict[str, list[str]]:
    """An HAProxy configuration as {section header: its lines}, comments left out."""
    sections: dict[str, list[str]] = {}
    header = ""
    for line in config.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            sections[header].append(" ".join(line.split()))
        else:
            header = line.strip()
            sections[header] = []
    return sections


def test_compose_replicas_runs_the_topology_of_api_replicas(tmp_path):
    """compose.replicas.yaml on top of compose.yaml starts what `API_REPLICAS=2 stack.py`
    starts, and its haproxy.cfg has the settings of stack.py's balancer."""
    base = yaml.safe_load((STEP / "compose.yaml").read_text())["services"]
    text = (STEP / "compose.replicas.yaml").read_text()
    replicas = yaml.load(text, ComposeLoader)["services"]
    server = base["prefect-server"]["command"]
    for name in ("prefect-server", "prefect-server-2"):  # API processes without services
        assert replicas[name]["command"] == [*server, "--no-services"], name
        assert "ports" in replicas[name] and replicas[name]["ports"] is None, name
    assert replicas["prefect-services"]["command"] == [server[0], "server", "services", "start"]
    for name in ("prefect-server-2", "prefect-services"):  # the first one migrates
        assert replicas[name]["extends"]["service"] == "prefect-server", name
        assert replicas[name]["environment"]["PREFECT_API_DATABASE_MIGRATE_ON_START"] == "false"
    assert "environment" not in replicas["prefect-server"]
    # Task servers on each API process directly; the other clients through the balancer.
    assert base["task-server"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert replicas["task-server-2"]["extends"]["service"] == "task-server"
    assert replicas["task-server-2"]["environment"]["PREFECT_API_URL"] == (
        "http://prefect-server-2:4200/api"
    )
    for name in ("app", "recover"):
        assert replicas[name]["environment"]["PREFECT_API_URL"] == "http://balancer:4200/api"
    assert replicas["balancer"]["ports"] == ["127.0.0.1:${PREFECT_PORT:-4200}:4200"]

    module = load_stack(tmp_path)
    module.API_REPLICAS = 2
    ports = {"prefect": 1, "prefect-1": 2, "prefect-2": 3, "balancer-stats": 4}
    stack = haproxy_sections(module.balancer_config(ports))
    compose = haproxy_sections((STEP / "haproxy.cfg").read_text())
    # Each has one section of its own: stack.py's statistics page, compose's DNS resolver.
    assert set(stack) - set(compose) == {"listen stats"}
    assert set(compose) - set(stack) == {"resolvers compose"}
    # The containers' addresses are names, looked up again while HAProxy runs.
    lookup = " resolvers compose init-addr last,libc,none"
    compose["backend replicas"] = [line.replace(lookup, "") for line in compose["backend replicas"]]

    def without_addresses(lines: list[str]) -> list[str]:
        return [re.sub(r"^(bind|server \S+) \S+", r"\1", line) for line in lines]

    for header in set(stack) & set(compose):
        assert without_addresses(stack[header]) == without_addresses(compose[header]), header
    servers = [
        line.split()[:3] for line in compose["backend replicas"] if line.startswith("server")
    ]
    assert servers == [
        ["server", "prefect-1", "prefect-server:4200"],
        ["server", "prefect-2", "prefect-server-2:4200"],
    ]


def test_the_task_key_changes_with_any_change_to_the_code(tmp_path):
    """Why the app and the task servers must deploy the same version: a blank line above
    the function is enough for a new key; the folder the code lives in is not."""
    source = "from prefect import task\n\n@task\ndef f(x):\n    return x\n"
    variants = {
        "same": source,
        "elsewhere": source,
        "blank line above": source.replace("\n@task", "\n\n@task"),
        "comment inside": source.replace("    return", "    # why\n    return"),
    }
    keys = {}
    for n, (name, text) in enumerate(variants.items()):
        path = tmp_path / name.replace(" ", "_") / "t.py"
        path.parent.mkdir()
        path.write_text(text)
        keys[name] = load_module(path, f"t_{n}").f.task_key
    assert keys["same"] == keys["elsewhere"]
    assert keys["blank line above"] != keys["same"]
    assert keys["comment inside"] != keys["same"]
    assert all(re.fullmatch(r"f-[0-9a-f]{8}", key) for key in keys.values())
