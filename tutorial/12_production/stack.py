"""The production topology on one machine, without Docker: PostgreSQL, Redis, the Prefect
server on them with an auth string, task servers, step 08's app and step 11's reconciler.

    python tutorial/12_production/stack.py               start it all; Ctrl+C stops it all
    python tutorial/12_production/stack.py -- CMD ...    start it all, run CMD with the
                                                         clients' settings, then stop it all

API_REPLICAS=2 (or more): that many Prefect API processes behind HAProxy, the task servers
of each connected to it directly (see NOTES.md, "Two API processes behind a balancer").

State (database, results, logs, generated secrets) stays in STACK_DIR (.prefect/production).
compose.yaml runs the same services with the same settings in containers.
"""

import base64
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STATE = Path(os.environ.get("STACK_DIR", ROOT / ".prefect" / "production")).resolve()
TASK_SERVERS = int(os.environ.get("TASK_SERVERS", "2"))  # per Prefect API process
API_REPLICAS = int(os.environ.get("API_REPLICAS", "1"))  # 2 or more: behind HAProxy
SERVER_ENV = HERE / "server"  # the Prefect server's own environment (prefect-redis)
AS_POSTGRES = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_tool(name: str) -> str:
    """Debian keeps PostgreSQL's programs in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: p.parts[-3])
    tool = shutil.which(name) or (str(found[-1]) if found else None)
    if not tool:
        sys.exit(f"stack: {name} not found: install PostgreSQL (Debian: apt install postgresql)")
    return tool


def postgres_folder() -> Path:
    """Where PostgreSQL keeps its database: STATE/postgres, or a throwaway folder when root
    runs the stack from a folder that PostgreSQL's user cannot enter (a repo under /root)."""
    folder = STATE / "postgres"
    if AS_POSTGRES and subprocess.run([*AS_POSTGRES, "test", "-x", str(STATE)]).returncode:
        # Deleted on stop: the database starts empty on every run, the rest stays in STATE.
        folder = Path(tempfile.mkdtemp(prefix="prefect-stack-postgres-"))
    folder.mkdir(parents=True, exist_ok=True)
    if AS_POSTGRES:  # root: PostgreSQL refuses to run as root, so its user owns the folder
        shutil.chown(folder, "postgres", "postgres")
    return folder


def load_secrets() -> dict[str, str]:
    """Generated once, kept in STATE with mode 0600; on real machines, your secret store."""
    path = STATE / "secrets.json"
    if not path.exists():
        path.write_text(
            json.dumps(
                {
                    "auth_string": f"prefect:{secrets.token_urlsafe(24)}",
                    "postgres_password": secrets.token_urlsafe(24),
                    "redis_password": secrets.token_urlsafe(24),
                }
            )
        )
        path.chmod(0o600)
    return json.loads(path.read_text())


def wait_for(what: str, ready, process: subprocess.Popen | None = None, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}; see {STATE}/logs")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout:.0f} s; see {STATE}/logs")
        time.sleep(0.2)


def haproxy() -> str:
    """Debian keeps HAProxy in /usr/sbin, which is not on every user's PATH."""
    tool = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if not tool:
        sys.exit("stack: haproxy not found: install it (Debian: apt install haproxy)")
    return tool


def answers(url: str, headers: dict | None = None, method: str = "GET") -> bool:
    try:
        return httpx.request(method, url, headers=headers, json={}, timeout=5).is_success
    except httpx.HTTPError:
        return False


# region server-settings
def server_env(secrets: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    """The Prefect server only: its database, Redis, and the auth string it checks."""
    s, p = secrets, ports
    redis = f"redis://:{s['redis_password']}@127.0.0.1:{p['redis']}"
    return {
        "PREFECT_HOME": str(STATE / "homes" / "prefect-server"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://prefect:"
        f"{s['postgres_password']}@127.0.0.1:{p['postgres']}/prefect",
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(p["redis"]),
        "PREFECT_REDIS_MESSAGING_PASSWORD": s["redis_password"],
        "PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE": "1",  # run states are events: no wait
        "PREFECT_SERVER_DOCKET_URL": f"{redis}/1",
        "PREFECT_SERVER_API_AUTH_STRING": s["auth_string"],
    }
    # endregion server-settings


def client_env(secrets: dict[str, str], ports: dict[str, int], name: str) -> dict[str, str]:
    """Task servers, the app, the reconciler and any command: no database, no Redis."""
    return {
        "PREFECT_HOME": str(STATE / "homes" / name),  # each process a home of its own
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "PREFECT_API_AUTH_STRING": secrets["auth_string"],
        # Parameters and results: one storage that every client shares.
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(STATE / "storage"),
        "API_URL": f"http://127.0.0.1:{ports['app']}",
    }


def balancer_config(ports: dict[str, int]) -> str:
    """HAProxy in front of the API processes: round robin, a replica that fails its health
    check leaves the rotation, websockets (event subscriptions) pass through. (haproxy.cfg
    has the same settings for compose.replicas.yaml.)"""
    replicas = "".join(
        f"    server {name} 127.0.0.1:{port}\n"
        for name, port in ports.items()
        if name.startswith("prefect-") and name.removeprefix("prefect-").isdigit()
    )
    return f"""global
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 90s
    timeout server 90s
    timeout tunnel 1h
    retries 3
    option redispatch
frontend prefect
    bind 127.0.0.1:{ports["prefect"]}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /api/health
    default-server check inter 1s fall 2 rise 2
{replicas}listen stats
    bind 127.0.0.1:{ports["balancer-stats"]}
    stats enable
    stats uri /
"""


class Stack:
    def __init__(self) -> None:
        self.secrets = load_secrets()
        names = ["postgres", "redis", "prefect", "app"]
        if API_REPLICAS > 1:  # "prefect" is the balancer, each replica has a port of its own
            names += [f"prefect-{n}" for n in range(1, API_REPLICAS + 1)] + ["balancer-stats"]
        self.ports = {name: free_port() for name in names}
        self.pgdata = postgres_folder() / "data"
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}  # to restart one
        self.postgres_running = False
        self.api_key = secrets.token_urlsafe(24)  # the app's one client (JOBS_API_KEY), per start

    def client_env(self, name: str) -> dict[str, str]:
        return client_env(self.secrets, self.ports, name)

    # --- starting and stopping ---------------------------------------------------------

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        names = [started for started, _ in self.processes]
        log = (STATE / "logs" / f"{name}.log").open("a" if name in names else "w")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**environ, **env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C reaches the stack only: it stops them in order
        )
        log.close()
        if name in names:  # started again: same place in the stop order
            self.processes[names.index(name)] = (name, process)
        else:
            self.processes.append((name, process))
        self.commands[name] = (argv, env)
        print(f"stack: started {name} (pid {process.pid})", flush=True)
        return process

    def start_postgres(self) -> None:
        folder = self.pgdata.parent
        if not folder.is_relative_to(STATE):
            print(
                f"stack: PostgreSQL's user cannot enter {STATE}; this run's database is in"
                f" {folder}, deleted on stop",
                flush=True,
            )
        if not (self.pgdata / "PG_VERSION").exists():
            pwfile = folder / "password"
            pwfile.write_text(self.secrets["postgres_password"])
            if AS_POSTGRES:
                shutil.chown(pwfile, "postgres", "postgres")
            initdb = [postgres_tool("initdb"), "-D", str(self.pgdata), "-U", "prefect"]
            initdb += ["--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"]
            subprocess.run(AS_POSTGRES + initdb, check=True, cwd=folder, stdout=subprocess.DEVNULL)
            pwfile.unlink()
        options = f"-p {self.ports['postgres']} -c listen_addresses=127.0.0.1"
        options += " -c unix_socket_directories=''"
        pg_ctl = [postgres_tool("pg_ctl"), "-D", str(self.pgdata), "-l", str(folder / "log")]
        subprocess.run(
            AS_POSTGRES + pg_ctl + ["-w", "-o", options, "start"], check=True, cwd=folder
        )
        self.postgres_running = True
        if not (folder / "created").exists():
            createdb = [postgres_tool("createdb"), "-h", "127.0.0.1"]
            createdb += ["-p", str(self.ports["postgres"]), "-U", "prefect", "prefect"]
            env = {**os.environ, "PGPASSWORD": self.secrets["postgres_password"]}
            subprocess.run(createdb, check=True, env=env)
            (folder / "created").touch()
        print(f"stack: PostgreSQL ready on 127.0.0.1:{self.ports['postgres']}", flush=True)

    def stop_postgres(self) -> None:
        pg_ctl = [postgres_tool("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"]
        folder = self.pgdata.parent
        subprocess.run(AS_POSTGRES + pg_ctl, check=False, cwd=folder, stdout=subprocess.DEVNULL)
        self.postgres_running = False
        print("stack: PostgreSQL stopped", flush=True)

    def up(self) -> None:
        for folder in ("logs", "storage", "homes", "redis"):
            (STATE / folder).mkdir(parents=True, exist_ok=True)
        # Every parameters file holds the submitter's settings, the auth string included.
        (STATE / "storage").chmod(0o700)
        self.start_postgres()

        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.ports["redis"])]
        argv += ["--requirepass", self.secrets["redis_password"], "--dir", str(STATE / "redis")]
        redis = self.start("redis", [*argv, "--appendonly", "yes", "--save", ""], {})
        log = STATE / "logs" / "redis.log"
        wait_for("redis", lambda: "Ready to accept connections" in log.read_text(), redis)
        print(f"stack: Redis ready on 127.0.0.1:{self.ports['redis']}", flush=True)

        server_python = SERVER_ENV / ".venv" / "bin" / "python"
        if not server_python.exists():
            uv = os.environ.get("UV", "uv")
            subprocess.run([uv, "sync", "--locked", "--project", str(SERVER_ENV)], check=True)
        api = self.client_env("stack")["PREFECT_API_URL"]
        argv = [str(server_python), "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        if API_REPLICAS == 1:
            server = self.start(
                "prefect-server",
                [*argv, "--port", str(self.ports["prefect"])],
                server_env(self.secrets, self.ports),
            )
            wait_for("the Prefect server", lambda: answers(f"{api}/health"), server)
            print(f"stack: Prefect server ready at {api}", flush=True)
            apis = {"": api}  # the task servers' API: the one API process
        else:
            apis = self.start_replicas(server_python)

        # The clients: they need only the Prefect server, so they start side by side. Each
        # task server connects to one API process directly: it is sent the runs queued there.
        task_servers = []
        for replica, replica_api in apis.items():
            for n in range(1, TASK_SERVERS + 1):
                name = f"task-server{replica}-{n}"
                env = {**self.client_env(name), "PREFECT_API_URL": replica_api}
                process = self.start(name, [sys.executable, str(HERE / "task_server.py")], env)
                task_servers.append((process, replica_api))
        app_url = self.client_env("app")["API_URL"]
        argv = [sys.executable, "-m", "uvicorn", "api:app", "--app-dir", "tutorial/08_fastapi_jobs"]
        argv += ["--host", "127.0.0.1", "--port", str(self.ports["app"])]
        keys = {"JOBS_API_KEYS": f"submit={self.api_key}"}
        app = self.start("app", argv, {**self.client_env("app"), **keys})
        self.start(
            "recover",
            [sys.executable, "tutorial/11_reliability/recover.py"],
            self.client_env("recover"),
        )

        auth = base64.b64encode(self.secrets["auth_string"].encode()).decode()
        headers = {"Authorization": f"Basic {auth}"}

        def subscribed(pid: int, api: str) -> bool:
            response = httpx.post(f"{api}/task_workers/filter", json={}, headers=headers)
            return f"{socket.gethostname()}-{pid}" in {w["identifier"] for w in response.json()}

        for task_server, replica_api in task_servers:
            ready = functools.partial(subscribed, task_server.pid, replica_api)
            wait_for("a task server", ready, task_server)
        print(f"stack: {len(task_servers)} task servers subscribed", flush=True)
        wait_for("the app", lambda: answers(f"{app_url}/health"), app)
        print(f"stack: app ready at {app_url}", flush=True)

    def start_replicas(self, server_python: Path) -> dict[str, str]:
        """API_REPLICAS API processes without the server's services, one process that runs
        the services, and HAProxy in front of the APIs. Returns each replica's own API URL."""
        apis = {}
        for n in range(1, API_REPLICAS + 1):
            name, port = f"prefect-server-{n}", self.ports[f"prefect-{n}"]
            argv = [str(server_python), "-m", "prefect", "server", "start", "--no-services"]
            env = {
                **server_env(self.secrets, self.ports),
                "PREFECT_HOME": str(STATE / "homes" / name),
            }
            if n > 1:  # the first one creates or migrates the tables, the others wait for it
                env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
            apis[f"-{n}"] = f"http://127.0.0.1:{port}/api"
            self.start(name, [*argv, "--host", "127.0.0.1", "--port", str(port)], env)
            if n == 1:
                self.wait_until_answering(name)
                env = {**env, "PREFECT_HOME": str(STATE / "homes" / "prefect-services")}
                env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
                argv = [str(server_python), "-m", "prefect", "server", "services", "start"]
                self.start("prefect-services", argv, env)
        for n in range(2, API_REPLICAS + 1):
            self.wait_until_answering(f"prefect-server-{n}")

        config = STATE / "haproxy.cfg"
        config.write_text(balancer_config(self.ports))
        balancer = self.start("haproxy", [haproxy(), "-f", str(config), "-db"], {})
        api = self.client_env("stack")["PREFECT_API_URL"]
        wait_for("the balancer", lambda: answers(f"{api}/health"), balancer)
        print(f"stack: {API_REPLICAS} Prefect API processes ready behind {api}", flush=True)
        return apis

    def wait_until_answering(self, name: str) -> None:
        """An API process (prefect-server-N): wait until its health check answers."""
        process = dict(self.processes)[name]
        api = f"http://127.0.0.1:{self.ports['prefect-' + name.rsplit('-', 1)[1]]}/api"
        wait_for(name, lambda: answers(f"{api}/health"), process)
        print(f"stack: {name} ready at {api}", flush=True)

    def restart(self, name: str) -> None:
        """Start a process that died again, with the same command and settings; for an API
        process, wait until it answers (its task servers reconnect on their own)."""
        argv, env = self.commands[name]
        self.start(name, argv, env)
        if name.startswith("prefect-server-"):
            self.wait_until_answering(name)

    def down(self) -> None:
        # The reverse order: clients first, then the balancer, then the Prefect server, then
        # its data stores.
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            print(f"stack: stopped {name}", flush=True)
        self.processes.clear()
        if self.postgres_running:
            self.stop_postgres()
        folder = self.pgdata.parent
        if not folder.is_relative_to(STATE):  # a throwaway database (see postgres_folder)
            if (folder / "log").exists():
                shutil.copyfile(folder / "log", STATE / "logs" / "postgres.log")
            shutil.rmtree(folder, ignore_errors=True)


def main(command: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    # SIGTERM (a process manager, the tutorial runner) stops everything, like Ctrl+C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        stack.up()
        if command:
            env = {**os.environ, **stack.client_env("command"), "JOBS_API_KEY": stack.api_key}
            return subprocess.run(command, cwd=ROOT, env=env).returncode
        # For your own clients (submit.py, the prefect CLI): `set -a; . client.env; set +a`
        settings = {**stack.client_env("your-client"), "JOBS_API_KEY": stack.api_key}
        env_file = STATE / "client.env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        env_file.chmod(0o600)
        print(f"stack: everything is up; the clients' settings, also in {env_file}:", flush=True)
        for key, value in settings.items():
            if key == "PREFECT_API_AUTH_STRING":
                value = f"(the auth_string in {STATE / 'secrets.json'})"
            elif key == "JOBS_API_KEY":
                value = f"(in {env_file})"
            print(f"  {key}={value}", flush=True)
        print("stack: Ctrl+C stops it all", flush=True)
        while True:
            exited = [name for name, process in stack.processes if process.poll() is not None]
            if any(not name.startswith("prefect-server-") for name in exited):
                break
            for name in exited:  # with API_REPLICAS >= 2: a lost API process is started again
                print(f"stack: {name} exited; starting it again", flush=True)
                stack.restart(name)
            time.sleep(1)
        print("stack: a process exited; stopping everything", flush=True)
        return 1
    except KeyboardInterrupt:
        return 130 if command else 0
    finally:
        stack.down()


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[1:] if args[:1] == ["--"] else args))
