"""Step 12's compose.yaml and Dockerfile, built and run for real with podman: the image, the
whole stack (PostgreSQL, Redis, the Prefect server, two task-server replicas, step 08's app,
step 11's reconciler), jobs through the app on both replicas, one replica killed while it
runs jobs and its runs recovered, and nothing of the stack left once it is taken down.

No image registry needs to be reachable. The images compose.yaml names by default
(python, uv, postgres, redis) are replaced by images built here from Debian's packages:
a base image made with debootstrap, and small stand-ins in tests/containers/. They are built
once per machine and kept in podman's storage; the stack's own image is tagged with a hash
of everything its build copies, and built again only when that changes.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from harness import step_dir, wait_for

from tutorial.runner import ROOT, free_port

STEP = step_dir(12)
STAND_INS = Path(__file__).parent / "containers"
PODMAN = shutil.which("podman")
BASE = "localhost/debian-py:bookworm"  # Debian's python3 (3.11, as python:3.11-slim)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
JOBS = 10
TEXT = "The new version is faster. It starts in half the time and uses less memory."
LONG_TEXT = "It is faster. It starts sooner. It uses less memory. It fails less. Users like it."

pytestmark = [
    pytest.mark.skipif(PODMAN is None, reason="podman is not installed (.ci/run installs it)"),
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="runs podman as root: debootstrap builds the base image as root only, and"
        " rootless podman needs subordinate id ranges (/etc/subuid) set up for the user",
    ),
    pytest.mark.skipif(
        shutil.which("runc") is None, reason="runc, the runtime podman runs here, is not installed"
    ),
    pytest.mark.skipif(
        PODMAN is not None
        and shutil.which("debootstrap") is None
        and subprocess.run([PODMAN, "image", "exists", BASE]).returncode != 0,
        reason=f"neither the base image {BASE} nor debootstrap to build it",
    ),
]

# What this kind of machine needs, in a containers.conf of the test's own: runc (crun fails
# on its cgroups) and resource limits no higher than it grants (podman's defaults fail with
# "setrlimit ... operation not permitted"). compose.yaml itself stays as a user runs it.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=1024:4096"]
[engine]
runtime = "runc"
"""


def podman(*args: str, check: bool = True, timeout: float = 600) -> str:
    done = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode:
        raise RuntimeError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def image_exists(name: str) -> bool:
    return subprocess.run([PODMAN, "image", "exists", name]).returncode == 0


def digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:12]


def build_context_files() -> list[Path]:
    """The files the Dockerfile's `COPY . .` takes: the repo minus Dockerfile.dockerignore."""

    def ignored(name: str) -> bool:
        skip = {".venv", ".prefect", "__pycache__", ".env", ".git"}
        return name in skip or (name.startswith(".") and name.endswith("_cache"))

    files = []
    for folder, folders, names in os.walk(ROOT):
        folders[:] = [name for name in folders if not ignored(name)]
        files += [Path(folder, name) for name in names if not ignored(name)]
    return sorted(files)


@dataclass
class Images:
    app: str
    postgres: str
    redis: str
    haproxy: str


def build(tag: str, dockerfile: Path, context: Path, tmp: Path, **build_args: str) -> None:
    """podman build, reaching PyPI and Debian's mirror through the host's network and CA
    bundle (mounted for the build only; uv is told to read it through a uv.toml)."""
    uv_config = tmp / "uv-config"
    uv_config.mkdir(exist_ok=True)
    (uv_config / "uv.toml").write_text("system-certs = true\n")
    argv = ["build", "--network", "host", "-f", str(dockerfile), "-t", tag]
    argv += ["-v", f"{uv_config}:/etc/uv:ro"]
    if CA_BUNDLE.exists():
        argv += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    podman(*argv, str(context))


def build_images(tmp: Path) -> Images:
    """Every image the stacks need, each built only if missing (or its inputs changed); one
    test process at a time builds, the other waits and then finds the images built."""
    with open(Path(tempfile.gettempdir()) / "prefect-step12-images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_images(tmp)


def _build_images(tmp: Path) -> Images:
    if not image_exists(BASE):
        root = tmp / "debian"
        packages = "--include=python3,python3-venv,ca-certificates"
        debootstrap = ["debootstrap", "--variant=minbase", packages, "bookworm", str(root)]
        subprocess.run(debootstrap, check=True, capture_output=True, timeout=900)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [PODMAN, "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True
        )
        assert tar.wait() == 0
        shutil.rmtree(root)

    # uv, as the image the Dockerfile copies it from (ghcr.io/astral-sh/uv:<minor>).
    dockerfile = (STEP / "Dockerfile").read_text()
    (uv_minor,) = re.findall(r"ghcr\.io/astral-sh/uv:([\d.]+)", dockerfile)
    uv = f"localhost/uv-from-pypi:{uv_minor}"
    if not image_exists(uv):
        build(
            uv,
            STAND_INS / "uv.Dockerfile",
            STAND_INS,
            tmp,
            BASE_IMAGE=BASE,
            UV_VERSION=f"{uv_minor}.*",
        )

    stand_ins = {}
    for name in ("postgres", "redis", "haproxy"):
        inputs = sorted(STAND_INS.glob(f"{name}*"))
        stand_ins[name] = f"localhost/{name}-from-debian:{digest(*inputs)}"
        if not image_exists(stand_ins[name]):
            build(
                stand_ins[name], STAND_INS / f"{name}.Dockerfile", STAND_INS, tmp, BASE_IMAGE=BASE
            )

    app = f"localhost/prefect-background-tasks:step-12-{digest(*build_context_files())}"
    if not image_exists(app):
        build(app, STEP / "Dockerfile", ROOT, tmp, BASE_IMAGE=BASE, UV_IMAGE=uv)
    # Builds of other code, unless recent: a test elsewhere on this machine may be using one.
    old = ["images", "--filter", "until=24h", "--format", "{{.Repository}}:{{.Tag}}"]
    for name in podman(*old).split():
        if name.startswith("localhost/prefect-background-tasks:step-12-") and name != app:
            podman("rmi", name, check=False)
    return Images(app, stand_ins["postgres"], stand_ins["redis"], stand_ins["haproxy"])


class Stack:
    """compose.yaml (and any file on top of it) run by podman-compose as a project of its
    own name."""

    def __init__(self, tmp: Path, images: Images, files: tuple[str, ...], **extra: str):
        self.files = files
        self.project = f"step12-{uuid.uuid4().hex[:8]}"
        self.app_url = f"http://127.0.0.1:{free_port()}"
        prefect_port = free_port()
        self.api_url = f"http://127.0.0.1:{prefect_port}/api"
        self.api_key = secrets.token_hex(16)
        self.auth_string = f"prefect:{secrets.token_hex(16)}"
        # The secrets in an .env file, as the lesson has you write one; this one is temporary.
        self.env_file = tmp / ".env"
        settings = {
            "PREFECT_AUTH_STRING": self.auth_string,
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "REDIS_PASSWORD": secrets.token_hex(16),
            "JOBS_API_KEYS": f"test={self.api_key}",
            # Not secrets: where this run differs from a user's.
            "TUTORIAL_IMAGE": images.app,
            "POSTGRES_IMAGE": images.postgres,
            "REDIS_IMAGE": images.redis,
            "HAPROXY_IMAGE": images.haproxy,
            "APP_PORT": self.app_url.rsplit(":", 1)[1],
            "PREFECT_PORT": str(prefect_port),
            # The reconciler acts within seconds, not minutes, on the runs of a killed replica.
            "RECOVER_SCHEDULED_AFTER": "15",
            "RECOVER_RUNNING_AFTER": "15",
            "RECOVER_INTERVAL": "2",
            **extra,
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        self.env_file.chmod(0o600)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "podman_compose", "--env-file", str(self.env_file)]
        argv += ["-p", self.project]
        for name in self.files:
            argv += ["-f", str(STEP / name)]
        argv += args
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=STEP)

    def containers(self, service: str | None = None) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        argv = ["ps", "-a", "--filter", label, "--format", "{{.Names}}"]
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        return sorted(podman(*argv).split())

    def left_behind(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        volumes = podman("volume", "ls", "--format", "{{.Name}}").split()
        networks = podman("network", "ls", "--format", "{{.Name}}").split()
        pods = podman("pod", "ps", "--format", "{{.Name}}").split()
        mine = [*volumes, *networks, *pods]
        return {
            "containers": self.containers(),
            "volumes": podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").split()
            + [name for name in volumes if name.startswith(self.project)],
            "networks/pods": [name for name in mine if self.project in name],
        }

    def remove_everything(self) -> None:
        """Whatever `down` left: the stack's containers, volumes, network and pod."""
        for container in self.containers():
            podman("rm", "-f", "-t", "0", container, check=False)
        for kind, names in self.left_behind().items():
            for name in names:
                if kind == "volumes":
                    podman("volume", "rm", "-f", name, check=False)
                else:
                    podman("pod", "rm", "-f", name, check=False)
                    podman("network", "rm", "-f", name, check=False)

    def logs(self, container: str) -> str:
        done = subprocess.run([PODMAN, "logs", container], capture_output=True, text=True)
        return done.stdout + done.stderr

    def healthy(self, container: str) -> bool:
        """Run the container's health check now: with no systemd, podman never runs it."""
        check = [PODMAN, "healthcheck", "run", container]
        return subprocess.run(check, capture_output=True).returncode == 0

    def inspect(self, container: str, template: str) -> str:
        return podman("inspect", "--format", template, container).strip()

    def running(self, container: str) -> bool:
        return self.inspect(container, "{{.State.Running}}") == "true"

    def prefect(self, method: str, path: str, auth: bool = True, **kwargs) -> httpx.Response:
        headers = {}
        if auth:
            token = base64.b64encode(self.auth_string.encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return httpx.request(method, f"{self.api_url}{path}", headers=headers, timeout=30, **kwargs)

    def task_run_states(self, ids: list[str]) -> dict[str, str | None]:
        body = {"task_runs": {"id": {"any_": ids}}, "limit": 200}
        runs = self.prefect("POST", "/task_runs/filter", json=body).raise_for_status().json()
        return {run["id"]: run["state"] and run["state"]["type"] for run in runs}

    def received(self, container: str) -> set[str]:
        """The runs a task-server replica took, from its log."""
        return set(self.deliveries(container))

    def deliveries(self, container: str) -> list[str]:
        """Each run a task-server replica was sent, once per delivery, from its log."""
        return re.findall(r"Received task run: ([0-9a-f-]{36})", self.logs(container))


@contextlib.contextmanager
def compose_up(*files: str, **settings: str) -> Iterator[Stack]:
    """The images built, the stack up (`up -d`), and on the way out everything removed."""
    tmp = Path(tempfile.mkdtemp(prefix="prefect-step12-containers-"))
    conf = tmp / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    saved = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)  # for podman here and in podman-compose
    stack = None
    try:
        images = build_images(tmp)
        stack = Stack(tmp, images, files, **settings)
        up = stack.compose("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        yield stack
    finally:
        try:
            if stack is not None:
                stack.compose("down", "-v", "-t", "10")
                stack.remove_everything()
        finally:
            if saved is None:
                del os.environ["CONTAINERS_CONF"]
            else:
                os.environ["CONTAINERS_CONF"] = saved
            shutil.rmtree(tmp)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with compose_up("compose.yaml") as stack:
        yield stack


@pytest.fixture(autouse=True)
def logs_of_a_failure(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """When a test fails, the end of each container's log, shown with the failure."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        for container in stack.containers():
            print(f"--- {container}\n{stack.logs(container)[-3000:]}")


def post_job(
    stack: Stack, title: str, headers: dict | None = None, text: str = TEXT
) -> httpx.Response:
    auth = {"Authorization": f"Bearer {stack.api_key}"} if headers is None else headers
    return httpx.post(
        f"{stack.app_url}/jobs",
        json={"title": title, "text": text},
        headers={**auth, "Idempotency-Key": str(uuid.uuid4())},
        timeout=30,
    )


def job(stack: Stack, location: str) -> dict:
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    return httpx.get(f"{stack.app_url}{location}", headers=auth, timeout=30).json()


def all_completed(stack: Stack, locations: list[str], timeout: float) -> list[dict]:
    def read() -> list[dict]:
        return [job(stack, location) for location in locations]

    def done(jobs: list[dict]) -> bool:
        assert not [j for j in jobs if j["status"] in ("failed", "cancelled")], jobs
        return all(j["status"] == "completed" for j in jobs)

    return wait_for(read, done, timeout=timeout, interval=1, what="jobs not all completed")


def test_the_stack_comes_up_healthy(stack: Stack):
    services = {"postgres", "redis", "prefect-server", "task-server", "app", "recover"}
    containers = {service: stack.containers(service) for service in services}
    assert len(containers["task-server"]) == 2, containers
    assert all(containers.values()), containers
    with_checks = [c for s in ("postgres", "redis", "prefect-server", "app") for c in containers[s]]
    for container in with_checks:
        wait_for(
            lambda c=container: stack.healthy(c),
            timeout=300,
            interval=2,
            what=f"{container} not healthy",
        )
    # Both replicas subscribed: the API lists each by its container's host name.
    hostnames = {stack.inspect(c, "{{.Config.Hostname}}") for c in containers["task-server"]}

    def subscribed() -> set[str]:
        response = stack.prefect("POST", "/task_workers/filter", json={})
        workers = response.json() if response.is_success else []
        return {w["identifier"].rsplit("-", 1)[0] for w in workers}

    wait_for(
        subscribed, lambda seen: hostnames <= seen, timeout=120, what="replicas not subscribed"
    )
    for service, names in containers.items():
        assert all(stack.running(c) for c in names), (service, names)


def test_jobs_complete_once_on_either_task_server_replica(stack: Stack):
    responses = [post_job(stack, f"Document {n}") for n in range(JOBS)]
    assert [r.status_code for r in responses] == [202] * JOBS, [r.text for r in responses]
    locations = [r.headers["Location"] for r in responses]
    jobs = all_completed(stack, locations, timeout=120)
    assert all(j["result"]["words"] == 15 for j in jobs), jobs
    ids = {j["id"] for j in jobs}
    # Each job taken exactly once, by either replica: which one is timing (step 03's NOTES).
    taken = [stack.received(c) & ids for c in stack.containers("task-server")]
    assert set().union(*taken) == ids and sum(map(len, taken)) == JOBS, taken


def test_the_app_and_the_prefect_api_refuse_clients_without_their_secret(stack: Stack):
    assert post_job(stack, "no key", headers={}).status_code == 401
    wrong = {"Authorization": f"Bearer {secrets.token_hex(16)}"}
    assert post_job(stack, "wrong key", headers=wrong).status_code == 401
    response = stack.prefect("POST", "/task_runs/filter", auth=False, json={})
    assert (response.status_code, response.json()) == (401, {"exception_message": "Unauthorized"})
    assert stack.prefect("GET", "/health", auth=False).status_code == 200


def test_submit_py_runs_against_the_stack(stack: Stack):
    """The lesson's client, run as the lesson runs it, from the host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(API_URL=stack.app_url, JOBS_API_KEY=stack.api_key, PREFECT_API_URL=stack.api_url)
    done = subprocess.run(
        [sys.executable, str(STEP / "submit.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    assert done.stdout.count(": completed {") == 4, done.stdout
    assert "without the auth string: 401 {'exception_message': 'Unauthorized'}" in done.stdout


def test_the_reconciler_recovers_the_runs_of_a_killed_replica(stack: Stack):
    victim = stack.containers("task-server")[0]
    # 5 s jobs (1 s a sentence), so a run seen in flight is still in flight when the kill lands.
    responses = [post_job(stack, f"Batch {n}", text=LONG_TEXT) for n in range(3 * JOBS)]
    assert {r.status_code for r in responses} == {202}
    locations = [r.headers["Location"] for r in responses]
    ids = [location.rsplit("/", 1)[1] for location in locations]

    def running_on_victim() -> set[str]:
        mine = stack.received(victim) & set(ids)
        states = stack.task_run_states(sorted(mine)) if mine else {}
        return {run for run, state in states.items() if state == "RUNNING"}

    wait_for(running_on_victim, timeout=120, interval=0.2, what="no run in flight")
    podman("kill", victim)
    jobs = all_completed(stack, locations, timeout=240)
    assert {j["id"] for j in jobs} == set(ids)
    # What the dead replica took and never finished, from its own log (the API may still
    # read Running for a run whose Completed was on its way): nothing will report these.
    finished = {ids[int(n)] for n in re.findall(r"Scored 'Batch (\d+)'", stack.logs(victim))}
    stranded = (stack.received(victim) & set(ids)) - finished
    assert stranded, "the victim's runs all finished before it was killed"
    (recover,) = stack.containers("recover")
    recovered = set(re.findall(r"([0-9a-f-]{36}): re-enqueued", stack.logs(recover)))
    assert stranded <= recovered, (stranded, recovered)
    print(f"killed {victim}: {len(stranded)} runs unfinished; all {len(ids)} jobs completed")


def test_down_leaves_nothing_behind(stack: Stack):
    started = time.monotonic()
    down = stack.compose("down", "-v", "-t", "10")
    assert down.returncode == 0, down.stdout + down.stderr
    print(f"down in {time.monotonic() - started:.1f} s")
    assert stack.left_behind() == {"containers": [], "volumes": [], "networks/pods": []}
