"""The cost of offloading, measured: one command, every setup, on this machine.

    uv run python -m benchmarks.run            the full run (about 8 minutes on 2 cores)
    uv run python -m benchmarks.run --quick    tiny counts, to check that everything works
    uv run python -m benchmarks.run --repeat 3 three rounds: medians, and each ratio's range

Each setup gets its own fresh Prefect server (temporary home, free port) or its own Redis,
started and stopped here. The setups run one after the other, and every job they submit must
come back, or the run exits non-zero. Prints a table and writes results/latest.json and
results/latest.png (or into --out).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from benchmarks import cpu, load, report
from benchmarks.measure import parse
from tutorial.runner import (
    ROOT,
    Process,
    Step,
    free_port,
    server_is_up,
    uvicorn_argv,
    wait_until_answering,
    wait_until_subscribed,
)

STEP_08 = ROOT / "tutorial" / "08_fastapi_jobs"
# Step 12's Prefect server environment: Prefect with prefect-redis, a uv project of its own.
SERVER_PROJECT = ROOT / "tutorial" / "12_production" / "server"
STACK = ROOT / "tutorial" / "12_production" / "stack.py"
SERVER_PYTHON = SERVER_PROJECT / ".venv" / "bin" / "python"
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
PYTHON = sys.executable
START_TIMEOUT = 180.0
LOCKED = r"^sqlalchemy\.exc\.OperationalError: .*database is locked"


@dataclass
class Config:
    noops: int = 200  # no-op jobs: submit latency, end-to-end throughput, queue latency
    pauses: int = 100  # 50 ms jobs, run 10 at a time
    concurrency: int = 10  # job slots per setup, in total
    clients: int = 20  # concurrent POST /jobs clients
    requests_per_client: int = 3

    def timeout(self, count: int) -> float:
        """How long a phase may take before its missing jobs count as lost."""
        return 120 + count * 1.0


def say(message: str = "") -> None:
    print(message, flush=True)


# --- processes ------------------------------------------------------------------------


class Processes:
    """Every process a setup starts; all of them are stopped when the setup ends, however
    it ends (the children also get SIGTERM if this process dies: see tutorial/runner.py)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Process] = []

    def start(self, label: str, argv: list[str], env: dict[str, str]) -> Process:
        process = Process(label, argv, env=env, log_file=self.log(label))
        self.started.append(process)
        return process

    def log(self, label: str) -> Path:
        return self.logs / f"{label}.log"

    def wait_for_log(self, process: Process, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        log = self.log(process.label)
        while text not in log.read_text(errors="replace"):
            if not process.running():
                raise RuntimeError(f"{process.label} exited with code {process.code}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.label}: no {text!r} within {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self, process: Process) -> None:
        process.stop()
        self.started.remove(process)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started[-1])


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without the caller's Prefect settings or Redis URL, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "REDIS_URL"}
    return {**env, **settings}


def submit(processes: Processes, module: str, args: list[str], env: dict, config: Config) -> dict:
    """Run a submitter for both phases (no-ops, then 50 ms jobs) and return its reports."""
    phases = {"noop": config.noops, "pause": config.pauses}
    timeout = config.timeout(max(phases.values()))
    argv = [PYTHON, "-m", module, *args, str(timeout)]
    # The submitter reads the CPU time of every process of the setup (benchmarks/cpu.py).
    env = {**env, **cpu.env_for({p.label: p.pid for p in processes.started})}
    process = processes.start("submit", [*argv, *(f"{job}:{n}" for job, n in phases.items())], env)
    try:
        process.wait(timeout=2 * timeout + 120)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"the submitter did not finish within {2 * timeout + 120:.0f} s"
        ) from None
    finally:
        processes.stop(process)
    reports = parse(processes.log("submit").read_text(errors="replace"))
    if set(reports) != set(phases):
        raise RuntimeError(f"the submitter's reports are missing:\n{tail(processes.log('submit'))}")
    return reports


def drive_api(processes: Processes, process: Process, port: int, config: Config) -> dict:
    """Wait until the app answers, then run the API phase against it, and count the CPU time
    of every process of the setup, the clients' (this process) included."""
    url = f"http://127.0.0.1:{port}"
    wait_until_answering(f"{url}/health", process, timeout=START_TIMEOUT)
    jobs = config.clients * config.requests_per_client
    meter = cpu.Meter({p.label: p.pid for p in processes.started}, self_label="clients")
    before = meter.read()
    result = asyncio.run(
        load.drive(url, config.clients, config.requests_per_client, config.timeout(jobs))
    )
    result["cpu_ms_per_job"] = cpu.per_job(before, meter.read(), result["completed"])
    return result


# --- the setups -------------------------------------------------------------------------


def postgres_installed() -> Path | None:
    """The folder of Debian's PostgreSQL programs (the newest version), if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


def start_postgres(processes: Processes, workdir: Path) -> str:
    """A throwaway PostgreSQL on a free loopback port; returns Prefect's database URL."""
    bin_dir = postgres_installed()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    data, sockets = workdir / "pg-data", workdir / "pg-sockets"
    # PostgreSQL refuses to run as root: as root, run it as the postgres user.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    for folder in (data, sockets):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        if as_postgres:
            shutil.chown(folder, "postgres", "postgres")
    if as_postgres:
        for parent in (workdir, workdir.parent):  # ours (a temporary folder): let postgres in
            parent.chmod(parent.stat().st_mode | 0o011)
    initdb = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
    subprocess.run(
        [*initdb, "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    port = free_port()
    argv = [*as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
    argv += ["-k", str(sockets), "-c", "listen_addresses=127.0.0.1"]
    postgres = processes.start("postgres", argv, clean_env())
    processes.wait_for_log(postgres, "ready to accept connections", timeout=60)
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"


def start_prefect_server(
    processes: Processes,
    home: Path,
    database_url: str | None = None,
    *,
    label: str = "prefect-server",
    python: str = PYTHON,
    settings: dict[str, str] | None = None,
    services: bool = True,
) -> tuple[str, dict[str, str]]:
    """A Prefect server on a free port; returns its API URL and its clients' environment.
    `settings` are the server's own; without `services`, it only answers the API."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = clean_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home))
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    argv = [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--no-ui"] + ([] if services else ["--no-services"])
    # Log each write that SQLite refused ("database is locked"), to count them afterwards.
    server_env = {**env, "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true", **(settings or {})}
    server = processes.start(label, argv, server_env)
    deadline = time.monotonic() + START_TIMEOUT
    while not server_is_up(api_url):
        if not server.running() or time.monotonic() > deadline:
            raise RuntimeError(
                f"the Prefect server did not start:\n{tail(processes.log(server.label))}"
            )
        time.sleep(0.25)
    return api_url, env


def count_task_runs(api_url: str, state_type: str | None = None) -> int:
    body = {"task_runs": {"state": {"type": {"any_": [state_type]}}}} if state_type else {}
    response = httpx.post(f"{api_url}/task_runs/count", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def haproxy() -> str | None:
    """Debian keeps HAProxy in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def server_python() -> str:
    """Step 12's server environment, made as stack.py makes it when it is missing."""
    if not SERVER_PYTHON.exists():
        uv = shutil.which("uv")
        if uv is None:
            raise RuntimeError(
                f"no {SERVER_PYTHON}: run uv sync --locked --project {SERVER_PROJECT}"
            )
        subprocess.run([uv, "sync", "--locked", "--project", str(SERVER_PROJECT)], check=True)
    return str(SERVER_PYTHON)


def balancer_config(port: int, api_urls: list[str]) -> str:
    """Step 12's HAProxy, from stack.py itself: round robin over the API processes, one that
    fails its health check leaves the rotation; its log names the process of each request."""
    spec = importlib.util.spec_from_file_location("stack", STACK)
    stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stack)
    ports = {"prefect": port, "balancer-stats": free_port()}
    ports |= {f"prefect-{n}": urlsplit(url).port for n, url in enumerate(api_urls, 1)}
    return stack.balancer_config(ports)


def wait_until_consuming(processes: Processes, redis_url: str, services: Process) -> None:
    """The services process is ready once the run states' recorder and the event persister
    read Redis's event stream: each joins a consumer group of its own there."""
    groups = {"task-run-recorder", "event-persister"}
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                found = {
                    g["name"].decode() for g in client.xinfo_groups("events") if g["consumers"]
                }
            except redis.ResponseError:  # no stream yet
                found = set()
            if groups <= found:
                return
            if not services.running() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Prefect services did not start:\n{tail(processes.log(services.label))}"
                )
            time.sleep(0.25)
    finally:
        client.close()


def start_api_processes(
    processes: Processes, workdir: Path, database_url: str, count: int
) -> tuple[str, dict[str, str], list[str]]:
    """Step 12's topology with API_REPLICAS=count (tutorial/12_production/stack.py): Redis,
    `count` API processes without services, one process for the services, HAProxy in front.
    Returns the balancer's API URL, the clients' environment and each API process's URL."""
    broker = urlsplit(start_redis(processes))
    # stack.py's server_env(), without passwords: loopback only, and thrown away after.
    settings = {
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": broker.hostname,
        "PREFECT_REDIS_MESSAGING_PORT": str(broker.port),
        # Publish each event at once: batched, a run's states would reach the database
        # only when 5 or 10 s have passed.
        "PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE": "1",
        "PREFECT_SERVER_DOCKET_URL": f"redis://{broker.netloc}/1",
    }
    python = server_python()

    def start_api(n: int) -> str:
        label = f"prefect-server-{n}"
        api_url, _ = start_prefect_server(
            processes,
            workdir / label,
            label=label,
            python=python,
            settings=settings,
            services=False,
        )
        return api_url

    api_urls = [start_api(1)]
    # The first one created the tables; the others, and the services, only use them.
    settings["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
    argv = [python, "-m", "prefect", "server", "services", "start"]
    home = {"PREFECT_HOME": str(workdir / "prefect-services")}
    services = processes.start("prefect-services", argv, clean_env(**settings, **home))
    api_urls += [start_api(n) for n in range(2, count + 1)]
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(balancer_config(port, api_urls))
    balancer = processes.start("haproxy", [haproxy(), "-f", str(config), "-db"], clean_env())
    api_url = f"http://127.0.0.1:{port}/api"
    wait_until_answering(f"{api_url}/health", balancer, timeout=START_TIMEOUT)
    wait_until_consuming(processes, broker.geturl(), services)
    # The clients share one home: the parameters and results files are there.
    env = clean_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(workdir / "prefect-home"))
    return api_url, env, api_urls


@dataclass
class PrefectSetup:
    name: str
    label: str
    description: str
    style: str  # how submit_prefect.py submits: naive or recommended
    postgres: bool  # the server's database: PostgreSQL, or else SQLite
    task_servers: int  # processes; the job slots are shared out between them
    api_task_servers: int  # step 08's task_server.py, started this many times
    api_app: str | None = None  # serve this app instead of step 08's own api.py
    # 0: one `prefect server start`, services included. 1 or more: step 12's topology with
    # that many API processes (start_api_processes), the task servers shared out over them.
    api_processes: int = 0

    def run(self, config: Config, processes: Processes, workdir: Path) -> dict:
        database_url = start_postgres(processes, workdir) if self.postgres else None
        if self.api_processes:
            api_url, env, api_urls = start_api_processes(
                processes, workdir, database_url, self.api_processes
            )
        else:
            api_url, env = start_prefect_server(processes, workdir / "prefect-home", database_url)
            api_urls = [api_url]

        def start_task_servers(label: str, argv: list[str], count: int) -> list[Process]:
            # Each connected to an API process directly, in turn: a run is queued in the
            # memory of the API process that created it, and only its own task servers get it.
            apis = [api_urls[n % len(api_urls)] for n in range(count)]
            servers = [
                processes.start(f"{label}-{n}", argv, {**env, "PREFECT_API_URL": api})
                for n, api in enumerate(apis, 1)
            ]
            for server, api in zip(servers, apis, strict=True):
                wait_until_subscribed(api, server)
            return servers

        limit = max(config.concurrency // self.task_servers, 1)
        argv = [PYTHON, "-m", "benchmarks.prefect_task_server", str(limit)]
        servers = start_task_servers("task-server", argv, self.task_servers)
        result = submit(processes, "benchmarks.submit_prefect", [self.style], env, config)
        for server in servers:
            processes.stop(server)

        # Step 08's app and task server, as they are in the tutorial.
        argv = [PYTHON, str(STEP_08 / "task_server.py")]
        start_task_servers("step-08-task-server", argv, self.api_task_servers)
        port = free_port()
        argv = uvicorn_argv(Step(STEP_08), port)
        if self.api_app:
            argv[argv.index("api:app")] = self.api_app  # step 08's folder stays importable
        app_env = {**env, "JOBS_API_KEYS": f"bench={load.API_KEY}"}
        app_env["JOBS_DB"] = str(workdir / "step-08-jobs.db")
        api = processes.start("step-08-api", argv, app_env)
        result["api"] = drive_api(processes, api, port, config)

        server_logs = "".join(
            log.read_text(errors="replace") for log in workdir.glob("prefect-server*.log")
        )
        result["prefect_api"] = {
            "task_runs": count_task_runs(api_url),
            "completed": count_task_runs(api_url, "COMPLETED"),
            "database": "postgresql" if self.postgres else "sqlite",
            # Each one answered 503, and the client retried after a back-off of seconds.
            "sqlite_locked_errors": len(re.findall(LOCKED, server_logs, re.M)),
        }
        if self.api_processes:
            result["prefect_api"]["created_per_api_process"] = created_per_api_process(
                processes.log("haproxy"), len(api_urls)
            )
        return result


def created_per_api_process(haproxy_log: Path, count: int) -> list[int]:
    """How many task runs each API process created (201), and so queued, from HAProxy's log."""
    created = re.findall(
        r" replicas/prefect-(\d+) \S+ 201 .*\"POST /api/task_runs/ HTTP", haproxy_log.read_text()
    )
    return [created.count(str(n)) for n in range(1, count + 1)]


def start_redis(processes: Processes) -> str:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    redis = processes.start("redis", [*argv, "--save", "", "--appendonly", "no"], clean_env())
    processes.wait_for_log(redis, "Ready to accept connections", timeout=30)
    return f"redis://127.0.0.1:{port}/0"


def redis_env(redis_url: str) -> dict[str, str]:
    # Step 08's folder is importable, for its Document model and scoring function.
    return clean_env(REDIS_URL=redis_url, PYTHONPATH=os.pathsep.join([str(ROOT), str(STEP_08)]))


@dataclass
class CelerySetup:
    name: str = "celery"
    label: str = "Celery + Redis"
    description: str = "Celery worker (prefork pool, -c 10), Redis as broker and result backend"

    def run(self, config: Config, processes: Processes, workdir: Path) -> dict:
        env = redis_env(start_redis(processes))
        argv = [PYTHON, "-m", "celery", "-A", "benchmarks.celery_jobs", "worker"]
        argv += ["-c", str(config.concurrency), "--loglevel=INFO"]
        worker = processes.start("celery-worker", argv, env)
        processes.wait_for_log(worker, " ready.")
        result = submit(processes, "benchmarks.submit_celery", [], env, config)
        port = free_port()
        argv = [PYTHON, "-m", "uvicorn", "benchmarks.api_celery:app", "--port", str(port)]
        api = processes.start("api", argv, env)
        result["api"] = drive_api(processes, api, port, config)
        return result


@dataclass
class ArqSetup:
    name: str = "arq"
    label: str = "arq + Redis"
    description: str = "arq worker (max_jobs 10, async jobs), Redis as queue and result store"

    def run(self, config: Config, processes: Processes, workdir: Path) -> dict:
        env = redis_env(start_redis(processes))
        env["WORKER_CONCURRENCY"] = str(config.concurrency)
        worker = processes.start(
            "arq-worker", [PYTHON, "-m", "arq", "benchmarks.arq_jobs.WorkerSettings"], env
        )
        processes.wait_for_log(worker, "Starting worker for")
        result = submit(processes, "benchmarks.submit_arq", [], env, config)
        port = free_port()
        argv = [PYTHON, "-m", "uvicorn", "benchmarks.api_arq:app", "--port", str(port)]
        api = processes.start("api", argv, env)
        result["api"] = drive_api(processes, api, port, config)
        return result


def replicas_setup(count: int) -> PrefectSetup:
    """Step 12's topology with `count` API processes. Nothing else differs between counts:
    the same two task servers (both on the one API process, or one on each), the same slots,
    submitter and app as the recommended setup."""
    apis = "1 API process" if count == 1 else f"{count} API processes"
    return PrefectSetup(
        name=f"replicas-{count}",
        label=f"Prefect, {apis}",
        description=f"step 12's topology: PostgreSQL, Redis, {apis} behind HAProxy and one"
        " services process; two task servers (limit 5 each) connected to the API processes"
        " directly; submitting as the recommended setup does, through HAProxy; step 08's app"
        " submitting in a pool of 2 processes, with two task servers",
        style="recommended",
        postgres=True,
        task_servers=2,
        api_task_servers=2,
        api_app="benchmarks.api_prefect_pool:app",
        api_processes=count,
    )


SETUPS = {
    "naive": PrefectSetup(
        name="naive",
        label="Prefect, naive",
        description="SQLite server, one task server (limit 10), a plain loop of .delay(),"
        " future.result() one by one; step 08's app with one task server",
        style="naive",
        postgres=False,
        task_servers=1,
        api_task_servers=1,
    ),
    "recommended": PrefectSetup(
        name="recommended",
        label="Prefect, recommended",
        description="PostgreSQL server, two task servers (limit 5 each), one reused API"
        " client submitting with create_run(), states read in bulk; step 08's app submitting"
        " in a pool of 2 processes, with two task servers",
        style="recommended",
        postgres=True,
        task_servers=2,
        api_task_servers=2,
        api_app="benchmarks.api_prefect_pool:app",
    ),
    "celery": CelerySetup(),
    "arq": ArqSetup(),
    "replicas-1": replicas_setup(1),
    "replicas-2": replicas_setup(2),
}


# --- checking and recording -------------------------------------------------------------


def completions(result: dict) -> dict:
    """Every job must come back: count them per phase, and in Prefect's API."""
    expected = completed = 0
    for phase in ("noop", "pause"):
        if phase in result:
            expected += result[phase]["expected"]
            completed += result[phase]["completed"]
    if "api" in result:
        expected += result["api"]["requests"]
        completed += result["api"]["completed"]
    counts = {"expected": expected, "completed": completed}
    if "prefect_api" in result:
        counts["completed_in_prefect_api"] = result["prefect_api"]["completed"]
        counts["task_runs_in_prefect_api"] = result["prefect_api"]["task_runs"]
    return counts


def all_done(counts: dict) -> bool:
    if counts["completed"] != counts["expected"]:
        return False
    in_api = counts.get("completed_in_prefect_api", counts["expected"])
    return in_api == counts["expected"] == counts.get("task_runs_in_prefect_api", in_api)


def run_setup(setup, config: Config, workdir: Path) -> dict:
    say(f"=== {setup.label}: {setup.description}")
    record = {"label": setup.label, "description": setup.description}
    record["load_average_before"] = os.getloadavg()
    started = time.monotonic()
    logs = workdir / setup.name
    logs.mkdir(exist_ok=True)
    processes = Processes(logs)
    try:
        record.update(setup.run(config, processes, logs))
        record["error"] = None
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        say(f"    failed: {record['error']}")
    finally:
        processes.stop_all()
    record["seconds"] = round(time.monotonic() - started, 1)
    record["load_average_after"] = os.getloadavg()
    record["completions"] = completions(record)
    record["ok"] = record["error"] is None and all_done(record["completions"])
    counts = record["completions"]
    say(
        f"    {counts['completed']}/{counts['expected']} jobs back in {record['seconds']} s"
        + (
            f", {counts['completed_in_prefect_api']} Completed in Prefect's API"
            if "completed_in_prefect_api" in counts
            else ""
        )
    )
    return record


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with open("/proc/meminfo") as meminfo:
        memory = f"{int(meminfo.readline().split()[1]) // 1024**2} GiB"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory": memory,
        "system": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("prefect", "celery", "arq", "redis", "fastapi", "uvicorn", "httpx"):
        found[package] = version(package)
    redis_server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    found["redis-server"] = next(
        (w.removeprefix("v=") for w in redis_server.stdout.split() if w.startswith("v=")), "?"
    )
    if SERVER_PYTHON.exists():  # step 12's server environment: the replicas setups' server
        read = "from importlib.metadata import version; print(version('prefect-redis'))"
        answer = subprocess.run([SERVER_PYTHON, "-c", read], capture_output=True, text=True)
        found["prefect-redis"] = answer.stdout.strip() or "?"
    if balancer := haproxy():
        words = subprocess.run([balancer, "-v"], capture_output=True, text=True).stdout.split()
        found["haproxy"] = words[2] if words[:2] == ["HAProxy", "version"] else "?"
    return found


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke test)")
    parser.add_argument("--n", type=int, help="no-op jobs per setup (default 200, quick 10)")
    parser.add_argument("--pauses", type=int, help="50 ms jobs per setup (default 100, quick 10)")
    parser.add_argument("--requests", type=int, help="POST /jobs per client (default 3, quick 1)")
    parser.add_argument("--setups", default=",".join(SETUPS), help="which, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json/.png go")
    parser.add_argument("--logs", type=Path, help="keep every process's log in this folder")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every setup (medians, ratio ranges)"
    )
    args = parser.parse_args(argv)
    quick = Config(noops=10, pauses=10, clients=10, requests_per_client=1)
    config = quick if args.quick else Config()
    if args.n is not None:
        config.noops = args.n
    if args.pauses is not None:
        config.pauses = args.pauses
    if args.requests is not None:
        config.requests_per_client = args.requests
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = set(args.setups.split(",")) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; known: {', '.join(SETUPS)}")
    return args, config


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(argv)
    os.chdir(ROOT)  # Prefect reads the repo's pyproject.toml from the current folder
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    if shutil.which("redis-server") is None:
        say("benchmarks: redis-server is not installed (Debian: apt-get install redis-server)")
        return 2
    chosen = [SETUPS[name] for name in args.setups.split(",")]
    if any(getattr(s, "postgres", False) for s in chosen) and not postgres_installed():
        say("benchmarks: PostgreSQL is not installed (Debian: apt-get install postgresql)")
        return 2
    if any(getattr(s, "api_processes", 0) for s in chosen):
        if haproxy() is None:
            say("benchmarks: HAProxy is not installed (Debian: apt-get install haproxy)")
            return 2
        try:
            server_python()  # made once, before anything is measured
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            say(f"benchmarks: step 12's server environment is missing: {exc}")
            return 2
    started = datetime.now(UTC)
    results = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": shlex.join(
            ["uv", "run", "python", "-m", "benchmarks.run", *(argv or sys.argv[1:])]
        ),
        "config": asdict(config),
        "machine": machine(),
        "versions": versions(),
        "load_average_start": os.getloadavg(),
        "setups": {},
    }
    say(
        f"Benchmarking on {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}),"
        f" load average {' '.join(f'{x:.2f}' for x in results['load_average_start'])}"
    )
    rounds = []
    try:
        for number in range(1, args.repeat + 1):
            if args.repeat > 1:
                say(f"--- round {number} of {args.repeat}")
            with tempfile.TemporaryDirectory(prefix="benchmarks-") as workdir:
                where = Path(args.logs or workdir)
                if args.logs:
                    where = args.logs / f"round-{number}" if args.repeat > 1 else args.logs
                    where.mkdir(parents=True, exist_ok=True)
                round_ = {"load_average_start": os.getloadavg(), "setups": {}}
                for name in args.setups.split(","):
                    round_["setups"][name] = run_setup(SETUPS[name], config, where)
                round_["load_average_end"] = os.getloadavg()
                rounds.append(round_)
    except KeyboardInterrupt:
        say("benchmarks: interrupted; everything it started has been stopped")
        return 130
    # Each number is the median of the rounds; each ratio in the table, the median of the
    # rounds' ratios with their range (a ratio measured side by side, round by round).
    results["setups"] = report.combine([r["setups"] for r in rounds])
    if len(rounds) > 1:
        results["rounds"] = rounds
    results["load_average_end"] = os.getloadavg()
    results["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    results["all_completed"] = all(s["ok"] for s in results["setups"].values())
    results["table"] = report.table(results)
    say()
    say(results["table"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    report.chart(results, args.out / "latest.png")
    say(f"Wrote {args.out / 'latest.json'} and {args.out / 'latest.png'}")
    if args.out.resolve() == RESULTS:
        report.update_readme(results, README)
        say(f"Updated the results in {README.relative_to(ROOT)}")
    if not results["all_completed"]:
        failed = [n for n, s in results["setups"].items() if not s["ok"]]
        say(f"benchmarks: not every job completed in: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
