"""Helpers the tests share: a real Prefect server, the steps' scripts as real processes,
and the task runs read back from the Prefect API."""

from __future__ import annotations

import importlib.util
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from tutorial.runner import (
    ROOT,
    Process,
    Step,
    free_port,
    server_is_up,
    uvicorn_argv,
    wait_until_subscribed,
)

STEPS_DIR = ROOT / "tutorial"
SERVER_START_TIMEOUT = 180.0
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the caller's own Prefect settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(settings)
    return env


def step_dir(number: int) -> Path:
    (path,) = STEPS_DIR.glob(f"{number:02d}_*")
    return path


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a file as a module (named after the file unless `name` is given); a script's
    `if __name__ == "__main__"` part does not run."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def step_tasks(step: Path) -> Iterator[Any]:
    """The step's tasks.py importable as `tasks`, as the scripts see it, to unpickle results."""
    module = load_module(step / "tasks.py")
    saved = sys.modules.get("tasks")
    sys.modules["tasks"] = module
    try:
        yield module
    finally:
        if saved is None:
            del sys.modules["tasks"]
        else:
            sys.modules["tasks"] = saved


def wait_for(
    read: Callable[[], Any],
    done: Callable[[Any], object] = bool,
    timeout: float = 60,
    interval: float = 0.2,
    what: str = "gave up waiting",
) -> Any:
    """Call `read()` until `done(value)` holds and return that value; fail the test with the
    last value read once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not done(value := read()):
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s; last: {value!r}"
        time.sleep(interval)
    return value


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one moment; touching ones (one
    ends when the next starts) do not overlap."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, change in edges:
        open_now += change
        most = max(most, open_now)
    return most


# What Prefect's client sends again (prefect/client/base.py, `retry_codes`).
RETRY_CODES = {429, 502, 503}


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: Process
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def start(cls, home: Path, **settings: str) -> Iterator[PrefectServer]:
        """A server of its own on a free port, with `settings` (for example
        PREFECT_SERVER_TASKS_SCHEDULING_MAX_SCHEDULED_QUEUE_SIZE="2") in its environment."""
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        env = clean_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), **settings)
        argv = [sys.executable, "-m", "prefect", "server", "start"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--no-ui"]
        log_file = home / "server.log"
        process = Process("server", argv, env=env, log_file=log_file)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while not server_is_up(api_url):
                if not process.running() or time.monotonic() > deadline:
                    raise RuntimeError(f"Prefect server did not start:\n{log_file.read_text()}")
                time.sleep(0.25)
            yield cls(api_url, home, process, env)
        finally:
            process.stop()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the API, sent again on 429, 502 and 503 as Prefect's own client does.
        The server answers 503 when SQLite is busy (`is_client_retryable_exception` in
        prefect/server/api/server.py); the transaction was rolled back, so sending it again
        is safe (tests/test_surprises.py pins both), and `prefect deployment run` or a task
        server would have retried it."""
        delay, deadline = 0.5, time.monotonic() + 60
        while True:
            response = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
            if response.status_code not in RETRY_CODES or time.monotonic() + delay > deadline:
                return response
            time.sleep(delay)
            delay = min(delay * 2, 8)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def task_run(self, task_run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/task_runs/{task_run_id}")

    def state_type(self, task_run_id: str) -> str | None:
        """COMPLETED, RUNNING, ...; None for the moment the server writes a new state."""
        state = self.task_run(task_run_id)["state"]
        return state and state["type"]

    def state_names(self, task_run_id: str) -> list[str]:
        """The run's state history, oldest first, as the UI shows it."""
        states = self.api("GET", "/task_run_states/", params={"task_run_id": task_run_id})
        return [s["name"] for s in sorted(states, key=lambda s: s["timestamp"])]

    def result(self, task_run_id: str) -> Any:
        """Load a finished run's result the way a Prefect client does."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        settings = {PREFECT_API_URL: self.api_url, PREFECT_HOME: self.home}
        with temporary_settings(settings), get_client(sync_client=True) as client:
            state = client.read_task_run(task_run_id).state
            return state.result(raise_on_failure=False)

    @contextmanager
    def states_held_back(self, when: str) -> Iterator[None]:
        """While the block runs, the server fails to write the task-run states for which the
        SQL condition `when` holds (on NEW, the state row about to be inserted). It writes a
        reported state in two steps, the run's pointer to it and then the state row, which
        on SQLite are not one transaction: the first lands and the run reads as having no
        state until the server writes the row on a later try, after the block."""
        database = sqlite3.connect(self.home / "prefect.db", timeout=30)
        try:
            with database:
                database.execute(
                    f"CREATE TRIGGER hold_back_state BEFORE INSERT ON task_run_state WHEN {when}"
                    " BEGIN SELECT RAISE(ABORT, 'held back by the test'); END"
                )
            yield
        finally:
            with database:
                database.execute("DROP TRIGGER IF EXISTS hold_back_state")
            database.close()

    def spawn(self, script: Path, *args: str, **env: str) -> Process:
        """Start a step's script (with its command-line arguments) against this server, from
        the repo root, as a user would."""
        return Process(
            script.stem, [sys.executable, str(script), *args], env={**self.env, **env}, echo=False
        )

    @contextmanager
    def serving(self, script: Path, **env: str) -> Iterator[Process]:
        """A task server for as long as the block runs, from when the API lists it as
        subscribed; for a module that shares one (a fixture scoped to the module)."""
        process = self.spawn(script, **env)
        try:
            wait_until_subscribed(self.api_url, process)
            yield process
        finally:
            process.stop()

    def spawn_api(self, step: Path, port: int | None = None, **env: str) -> tuple[Process, str]:
        """Serve a step's api.py with uvicorn (on a free port unless given one); returns the
        process and the app's base URL."""
        port = port or free_port()
        process = Process(
            "api", uvicorn_argv(Step(step), port), env={**self.env, **env}, echo=False
        )
        return process, f"http://127.0.0.1:{port}"

    def run_script(self, script: Path, *args: str, timeout: float = 120, **env: str) -> Process:
        """Run a step's script to the end; its output is in `.output`, its exit code in `.code`."""
        process = self.spawn(script, *args, **env)
        try:
            process.wait(timeout=timeout)
        except BaseException:
            process.stop()
            raise
        return process


class RunsEndBetweenPages:
    """A Prefect client that, once its first `POST /task_runs/filter` has answered and before
    the answer is returned, ends `count` of the runs `run_ids` that the answer holds: runs
    ending between two pages of a reader, as a task server ends them while a command reads."""

    def __init__(
        self, client: Any, server: PrefectServer, run_ids: list[str], count: int = 100
    ) -> None:
        self.client, self.server, self.run_ids, self.count = client, server, set(run_ids), count
        self.pages = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.request(method, path, **kwargs)
        if path == "/task_runs/filter":
            self.pages += 1
            if self.pages == 1:
                ours = [run["id"] for run in response.json() if run["id"] in self.run_ids]
                for run_id in ours[: self.count]:
                    end_run(self.server, run_id)
        return response


@contextmanager
def waiting_runs(prefect_server: PrefectServer, task: Any, count: int) -> Iterator[list[str]]:
    """`count` runs of a task no task server serves, queued with .delay() (the test's client
    settings must point at the server); deleted afterwards, so that no later test reads them."""
    ids = [str(task.delay(n).task_run_id) for n in range(count)]
    try:
        yield ids
    finally:
        for run_id in ids:
            httpx.delete(f"{prefect_server.api_url}/task_runs/{run_id}", timeout=30)


def end_run(prefect_server: PrefectServer, run_id: str, state: str = "CANCELLED") -> None:
    """Force a run into a state, as an operator would through the API."""
    body = {"state": {"type": state, "name": state.title()}, "force": True}
    prefect_server.api("POST", f"/task_runs/{run_id}/set_state", json=body)


class FlakyApi:
    """A TCP proxy in front of the Prefect server that a test can make hang (connections and
    requests are taken and never answered) or go down (every connection is dropped), with
    the clients' open connections included, then bring back up."""

    def __init__(self, api_url: str) -> None:
        upstream = httpx.URL(api_url)
        self.upstream, self.mode, self.sockets = (upstream.host, upstream.port), "up", []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}{upstream.path}"
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "down":
            self._close_connections()

    def close(self) -> None:
        self.listener.close()
        self._close_connections()

    def _close_connections(self) -> None:
        for sock in self.sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.mode == "down":
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.mode == "hang":  # hold what came: the other side waits
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            sink.close()
