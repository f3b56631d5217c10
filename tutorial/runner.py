"""Run the tutorial's steps end to end, or keep a Prefect server up to follow them by hand.

    tutorial              every step, in order
    tutorial 1            one step (1, 01 or 01_first_background_task)
    tutorial server [N]   start and keep a local Prefect server; print the commands for step N
    tutorial list         list the steps
    tutorial reset        delete the tutorial's local Prefect home (database, results)

Each step folder holds a task_server.py and a submit.py, and the web steps an api.py (a
FastAPI app, served with uvicorn; submit.py finds it through API_URL). The runner uses the Prefect
server that PREFECT_API_URL points at (the repo's pyproject.toml sets a local one) or,
if nothing answers there, starts a throwaway one whose home stays inside the repo. A step with
a stack.py (step 12) brings up its own services, Prefect server included: the runner runs
`stack.py -- python submit.py` instead.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
STEPS_DIR = ROOT / "tutorial"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
SERVER_START_TIMEOUT = 180.0
SUBSCRIBE_TIMEOUT = 60.0
SUBMIT_TIMEOUT = 600.0
API_START_TIMEOUT = 60.0
STOP_GRACE = 10.0
STACK_STOP_GRACE = 90.0


class TutorialError(Exception):
    """A problem to report in one clear line, exiting non-zero."""


class UsageError(TutorialError):
    """The command line asked for something that does not exist (exit code 2)."""


class Interrupted(Exception):
    """Ctrl+C, SIGTERM or SIGHUP: stop everything and exit 130."""


@dataclass(frozen=True)
class Step:
    path: Path

    @property
    def number(self) -> int:
        return int(self.path.name.split("_", 1)[0])

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def title(self) -> str:
        readme = self.path / "README.md"
        if readme.exists():
            for line in readme.read_text().splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
        return self.name

    @property
    def task_servers(self) -> list[Path]:
        """task_server.py, or task_server_*.py when a step runs several different ones."""
        return sorted(self.path.glob("task_server*.py"))

    @property
    def stack(self) -> Path | None:
        """stack.py: the step runs on services of its own (PostgreSQL, Redis, a server)."""
        stack = self.path / "stack.py"
        return stack if stack.exists() else None

    @property
    def api(self) -> Path | None:
        """api.py: the step's FastAPI app, when it has one."""
        api = self.path / "api.py"
        return api if api.exists() else None


def uvicorn_argv(step: Step, port: int) -> list[str]:
    """Serve the step's `app` from api.py, as `uvicorn --app-dir <step> api:app` does."""
    return [
        *(sys.executable, "-m", "uvicorn", "api:app", "--app-dir", str(step.path)),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]


def find_steps() -> list[Step]:
    return [
        Step(p)
        for p in sorted(STEPS_DIR.iterdir())
        if p.is_dir() and re.fullmatch(r"\d\d_\w+", p.name)
    ]


def resolve_step(arg: str, steps: list[Step]) -> Step:
    for step in steps:
        if arg == step.name or (arg.isdigit() and int(arg) == step.number):
            return step
    known = ", ".join(s.name for s in steps)
    raise UsageError(f"unknown step {arg!r}; the steps are: {known}")


# --- output ------------------------------------------------------------------------

_COLORS = ["36", "33", "35", "32", "34", "31"]
_use_color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
_print_lock = threading.Lock()
# Set by SIGINT, SIGTERM or SIGHUP. Raising from a signal handler can land inside library
# code (logging, subprocess) and be swallowed, so the handler only sets this flag and the
# runner's waits check it.
_stop_requested = threading.Event()


def check_interrupted() -> None:
    if _stop_requested.is_set():
        raise Interrupted()


def pause(seconds: float) -> None:
    """Sleep between polls, waking early (and raising Interrupted) on Ctrl+C."""
    if _stop_requested.wait(seconds):
        raise Interrupted()


def say(message: str = "") -> None:
    with _print_lock:
        print(message, flush=True)


def _prefix(label: str, index: int) -> str:
    text = f"[{label}]"
    if _use_color:
        return f"\033[{_COLORS[index % len(_COLORS)]}m{text}\033[0m"
    return text


# --- processes ---------------------------------------------------------------------

if sys.platform == "linux":
    _libc = ctypes.CDLL(None, use_errno=True)

    def _die_with_runner() -> None:
        # PR_SET_PDEATHSIG: the child gets SIGTERM if the runner itself is killed.
        _libc.prctl(1, signal.SIGTERM)

else:
    _die_with_runner = None


class Process:
    """A child process in its own process group; its output is kept and, with `echo`,
    printed line by line behind a `[label]` prefix."""

    _count = 0

    def __init__(
        self,
        label: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
        echo: bool = True,
    ):
        self.label = label
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        out = open(log_file, "w") if log_file else subprocess.PIPE  # noqa: SIM115
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_runner,
        )
        self._reader = None
        if log_file:
            out.close()
        else:
            prefix = _prefix(label, Process._count) if echo else None
            Process._count += 1
            self._reader = threading.Thread(target=self._pump, args=(prefix,), daemon=True)
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _pump(self, prefix: str | None) -> None:
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
            if prefix:
                say(f"{prefix} {line}")
        with self._new_line:
            self._new_line.notify_all()

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line that matches `pattern`, waiting up to `timeout` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    raise TimeoutError(
                        f"{self.label}: no line matching {pattern!r} within {timeout:.0f} s;"
                        f" its output so far:\n{self.output}"
                    )
                self._new_line.wait(min(remaining, 1.0))

    @property
    def code(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None, interruptible: bool = False) -> int:
        """Wait for the exit code; with `interruptible`, Ctrl+C ends the wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while interruptible and self.running():
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.popen.args, timeout)
            pause(0.2)
        code = self.popen.wait(timeout=timeout)
        if self._reader:
            self._reader.join(timeout=5)
        return code

    def stop(self, grace: float = STOP_GRACE, sig: int = signal.SIGTERM) -> int:
        """Send `sig` to the whole process group, SIGKILL what is left after `grace`."""
        if self.running():
            self._signal_group(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # The group may outlive its leader (a server's own children): kill what remains.
        self._signal_group(signal.SIGKILL)
        return self.wait(timeout=None)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


# --- the Prefect server --------------------------------------------------------------


@dataclass
class Server:
    api_url: str
    process: Process | None = None  # None when the server was already running
    log_file: Path | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def prefect_settings():
    # Imported late: prefect takes a few seconds to import, and it must read this repo's
    # pyproject.toml, which it finds in the current folder.
    from prefect.settings import get_current_settings

    return get_current_settings()


def server_is_up(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_server() -> Server:
    settings = prefect_settings()
    api_url = str(settings.api.url or "").rstrip("/")
    if not api_url:
        raise TutorialError(
            "PREFECT_API_URL is not set; background tasks need a Prefect server that"
            " task servers and submitters share (this repo's pyproject.toml sets one)"
        )
    if server_is_up(api_url):
        say(f"Using the Prefect server already running at {api_url}")
        return Server(api_url)

    parts = urlsplit(api_url)
    host, port = parts.hostname or "", parts.port or 80
    if host not in LOCAL_HOSTS:
        raise TutorialError(
            f"no Prefect server answers at {api_url} (from PREFECT_API_URL); start it, or"
            " unset PREFECT_API_URL to use the tutorial's local server"
        )
    if not port_is_free(host, port):
        raise TutorialError(
            f"port {port} on {host} is taken by something that is not a Prefect server;"
            f" stop it, or point PREFECT_API_URL at a free port"
            f" (for example PREFECT_API_URL=http://127.0.0.1:4201/api)"
        )

    home = Path(settings.home).expanduser()
    home = home if home.is_absolute() else ROOT / home
    home.mkdir(parents=True, exist_ok=True)
    log_file = home / "server.log"
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    process = Process("server", argv, log_file=log_file)
    server = Server(api_url, process, log_file)
    started = time.monotonic()
    say(f"Starting a local Prefect server at {server.ui_url} (home: {_show(home)})")
    try:
        _wait_until_up(server, started, log_file)
    except BaseException:
        process.stop()
        raise
    say(
        f"Prefect server is up after {time.monotonic() - started:.0f} s; its log: {_show(log_file)}"
    )
    return server


def _wait_until_up(server: Server, started: float, log_file: Path) -> None:
    interactive = sys.stdout.isatty()
    last_report = started
    while not server_is_up(server.api_url):
        elapsed = time.monotonic() - started
        if not server.process.running():
            raise TutorialError(
                f"the Prefect server exited with code {server.process.code}"
                f" before it answered; the end of its log ({_show(log_file)}):\n" + _tail(log_file)
            )
        if elapsed > SERVER_START_TIMEOUT:
            raise TutorialError(
                f"the Prefect server did not answer within {SERVER_START_TIMEOUT:.0f} s;"
                f" the end of its log ({_show(log_file)}):\n" + _tail(log_file)
            )
        if interactive:
            with _print_lock:
                print(f"\r  waiting for it to answer ... {elapsed:.0f} s", end="", flush=True)
        elif time.monotonic() - last_report >= 5:
            say(f"  waiting for it to answer ... {elapsed:.0f} s")
            last_report = time.monotonic()
        pause(0.5)
    if interactive:
        say()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    return "\n".join(f"  {line}" for line in text[-lines:])


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# --- running a step ----------------------------------------------------------------


def wait_until_subscribed(api_url: str, task_server: Process) -> None:
    """A task server is ready once the API lists it; its id is '<hostname>-<pid>'."""
    identifier = f"{socket.gethostname()}-{task_server.pid}"
    deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
    while time.monotonic() < deadline:
        if not task_server.running():
            raise TutorialError(
                f"{task_server.label} exited with code {task_server.code} before it subscribed"
            )
        response = httpx.post(f"{api_url}/task_workers/filter", json={}, timeout=10)
        response.raise_for_status()
        if any(w["identifier"] == identifier for w in response.json()):
            return
        pause(0.2)
    raise TutorialError(f"{task_server.label} did not subscribe within {SUBSCRIBE_TIMEOUT:.0f} s")


def wait_until_answering(url: str, process: Process, timeout: float = API_START_TIMEOUT) -> None:
    """Wait until `url` answers 200, failing early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise TutorialError(
                f"{process.label} exited with code {process.code} before {url} answered"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        pause(0.2)
    raise TutorialError(f"{process.label}: {url} did not answer within {timeout:.0f} s")


def run_own_stack(step: Step) -> None:
    """stack.py starts the step's services, runs submit.py against them and stops them."""
    argv = [sys.executable, str(step.stack), "--", sys.executable, str(step.path / "submit.py")]
    say(f"Running {_show(step.stack)}: its own services, then submit.py")
    stack = Process("stack", argv)
    try:
        code = stack.wait(timeout=SUBMIT_TIMEOUT, interruptible=True)
    except subprocess.TimeoutExpired:
        raise TutorialError(f"stack.py did not finish within {SUBMIT_TIMEOUT:.0f} s") from None
    finally:
        # SIGTERM: stack.py stops its services in order (PostgreSQL last) before it exits.
        stack.stop(grace=STACK_STOP_GRACE)
    if code != 0:
        raise TutorialError(f"step {step.name} failed: stack.py exited with code {code}")
    logs = Path(os.environ.get("STACK_DIR") or ".prefect/production") / "logs"
    say(f"Step {step.number:02d} done. Its services are stopped; their logs: {logs}")


def run_step(step: Step, server: Server | None) -> None:
    say()
    say(f"=== Step {step.number:02d}: {step.title} ===")
    say(f"    lesson: {_show(step.path / 'README.md')}")
    if step.stack:
        run_own_stack(step)
        return
    if not step.task_servers or not (step.path / "submit.py").exists():
        raise TutorialError(f"{step.name} has no task_server.py or submit.py")
    task_servers: list[Process] = []
    services: list[Process] = []
    env = dict(os.environ)
    if step.api:
        # Every process of the step learns where the app will listen (tasks may call it).
        port = free_port()
        env["API_URL"] = f"http://127.0.0.1:{port}"
        # The app's one client (api.py refuses to start without one) and submit.py's key.
        env["JOBS_API_KEY"] = secrets.token_urlsafe(24)
        env["JOBS_API_KEYS"] = f"submit={env['JOBS_API_KEY']}"
    try:
        for script in step.task_servers:
            task_server = Process(script.stem, [sys.executable, str(script)], env=env)
            task_servers.append(task_server)
            say(f"Started {_show(script)} (pid {task_server.pid})")
        for task_server in task_servers:
            wait_until_subscribed(server.api_url, task_server)
        say(f"Task server{'s' if len(task_servers) > 1 else ''} subscribed")
        if step.api:
            api = Process("api", uvicorn_argv(step, port), env=env)
            services.append(api)
            say(f"Started {_show(step.api)} with uvicorn at {env['API_URL']}")
            wait_until_answering(f"{env['API_URL']}/health", api)
        say("Running submit.py")
        submit = Process("submit", [sys.executable, str(step.path / "submit.py")], env=env)
        try:
            code = submit.wait(timeout=SUBMIT_TIMEOUT, interruptible=True)
        except subprocess.TimeoutExpired:
            raise TutorialError(f"submit.py did not finish within {SUBMIT_TIMEOUT:.0f} s") from None
        finally:
            submit.stop()
        if code != 0:
            raise TutorialError(f"step {step.name} failed: submit.py exited with code {code}")
        for process in task_servers + services:
            if not process.running():
                raise TutorialError(
                    f"step {step.name} failed: {process.label} exited with code"
                    f" {process.code} while the step ran"
                )
    finally:
        for process in services + task_servers:
            process.stop()
    say(f"Step {step.number:02d} done. Its runs in the UI: {server.ui_url}/runs")


# --- commands ------------------------------------------------------------------------


def cmd_run(steps: list[Step]) -> None:
    # Steps with a stack.py bring their own Prefect server.
    server = ensure_server() if any(not step.stack for step in steps) else None
    try:
        for step in steps:
            check_interrupted()
            run_step(step, server)
    finally:
        if server and server.process:
            say("Stopping the local Prefect server")
            server.process.stop()
    say()
    say(f"All done: {len(steps)} step{'s' if len(steps) > 1 else ''} ran.")
    if server is None:
        return
    if server.process:
        say("To browse these runs in the UI, start the server again: `uv run tutorial server`")
    else:
        say(f"Browse the runs in the UI: {server.ui_url}/runs")


# The key the lessons use for the app's one client when run by hand, on 127.0.0.1 only.
DEMO_KEY = "local-demo-key-not-secret"


def cmd_server(step: Step) -> None:
    if step.stack:
        python = "uv run python" if os.environ.get("UV") else "python"
        say(f"{step.name} runs on services of its own; start them all, Ctrl+C stops them:")
        say(f"  cd {ROOT} && {python} {_show(step.stack)}")
        return
    server = ensure_server()
    python = "uv run python" if os.environ.get("UV") else "python"
    say()
    say(f"Prefect UI: {server.ui_url}")
    say(f"Follow {step.name} by hand: each command in a terminal of its own, from the repo root.")
    say("(In each, `export DO_NOT_TRACK=1` first: the README says why.)")
    if not server.process:
        say(f"  terminal 1:  the Prefect server, already running at {server.api_url}")
    terminal = 2
    for script in step.task_servers:
        say(f"  terminal {terminal}:  cd {ROOT} && {python} {_show(script)}")
        terminal += 1
    key = ""
    if step.api:
        uvicorn = "uv run uvicorn" if os.environ.get("UV") else "uvicorn"
        app = f"{uvicorn} --app-dir {_show(step.path)} api:app"
        if "JOBS_API_KEYS" in step.api.read_text():
            # The lesson's demo client and key, so its curl commands work as printed there.
            app = f"JOBS_API_KEYS=me={DEMO_KEY} {app}"
            key = f"JOBS_API_KEY={DEMO_KEY} "
        say(f"  terminal {terminal}:  cd {ROOT} && {app}")
        terminal += 1
    say(f"  terminal {terminal}:  cd {ROOT} && {key}{python} {_show(step.path / 'submit.py')}")
    if not server.process:
        return
    say()
    say("The server runs until you press Ctrl+C.")
    try:
        code = server.process.wait(timeout=None, interruptible=True)
        raise TutorialError(
            f"the Prefect server exited with code {code}; the end of its log:\n"
            + _tail(server.log_file)
        )
    finally:
        server.process.stop()


def cmd_reset() -> None:
    settings = prefect_settings()
    home = Path(settings.home).expanduser()
    home = (home if home.is_absolute() else ROOT / home).resolve()
    if not home.is_relative_to(ROOT):
        raise TutorialError(f"refusing to delete {home}: it is not inside this repo")
    if server_is_up(str(settings.api.url).rstrip("/")):
        raise TutorialError("a Prefect server is running on the tutorial's home; stop it first")
    if home.exists():
        shutil.rmtree(home)
        say(f"Deleted {_show(home)}")
    else:
        say(f"Nothing to delete: {_show(home)} does not exist")


def _interrupt(signum: int, frame: object) -> None:
    _stop_requested.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tutorial",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("command", nargs="?", default="all", help="a step, or: server, list, reset")
    parser.add_argument("step", nargs="?", help="with `server`: the step to print commands for")
    args = parser.parse_args(argv)

    # Prefect reads its settings from the current folder; every process runs from here.
    os.chdir(ROOT)
    # Prefect's SDK telemetry starts at `import prefect` in a terminal (a notice, files in
    # .prefect/.sdk_telemetry/, an event if the server allows it); only this variable turns
    # it off, here and in every process the runner starts.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    steps = find_steps()
    try:
        if args.command == "list":
            for step in steps:
                say(f"{step.name}  {step.title}")
        elif args.command == "reset":
            cmd_reset()
        elif args.command == "server":
            cmd_server(resolve_step(args.step or str(steps[0].number), steps))
        elif args.command == "all":
            cmd_run(steps)
        else:
            cmd_run([resolve_step(args.command, steps)])
    except TutorialError as exc:
        say(f"tutorial: error: {exc}")
        return 2 if isinstance(exc, UsageError) else 1
    except (Interrupted, KeyboardInterrupt):
        say("tutorial: interrupted; everything it started has been stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
