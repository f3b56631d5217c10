from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import PrefectServer
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from tutorial.runner import Process, wait_until_answering, wait_until_subscribed

# No Prefect SDK telemetry from the tests or the processes they start (the README explains it).
os.environ.setdefault("DO_NOT_TRACK", "1")


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut teardowns
    raise KeyboardInterrupt


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI time limit, `kill`) would end the test process without its teardowns,
    # leaving the servers and stacks the tests started (their own sessions) running. As an
    # interrupt, the fixtures' finally blocks stop them.
    signal.signal(signal.SIGTERM, _interrupt)


# The longest test files start first, so that neither test process is left with one of them
# at the end while the other has nothing to do (pytest-xdist hands out whole files in order).
LONGEST_FIRST = [
    "test_step_11.py",
    "test_benchmarks.py",
    "test_runner.py",
    "test_step_12.py",
    "test_step_12_containers.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the others, the order stays


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server for the whole session, on a free port, with its own home."""
    with PrefectServer.start(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


@pytest.fixture
def client_settings(prefect_server: PrefectServer) -> Iterator[None]:
    """.delay() and the other client calls in the test itself talk to the session's server."""
    settings = {PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}
    with temporary_settings(settings):
        yield


@pytest.fixture
def started() -> Iterator[list[Process]]:
    """Every process a test starts goes here, to be stopped after the test, failed or not."""
    processes: list[Process] = []
    yield processes
    for process in processes:
        process.stop()


@pytest.fixture
def spawn(prefect_server: PrefectServer, started: list[Process]) -> Callable[..., Process]:
    """Start a step's script in the background."""

    def start(script: Path, **env: str) -> Process:
        started.append(process := prefect_server.spawn(script, **env))
        return process

    return start


@pytest.fixture
def task_server(
    prefect_server: PrefectServer, spawn: Callable[..., Process]
) -> Callable[..., Process]:
    """Start a step's task server and wait until the API lists it as subscribed."""

    def start(script: Path, **env: str) -> Process:
        process = spawn(script, **env)
        wait_until_subscribed(prefect_server.api_url, process)
        return process

    return start


@pytest.fixture
def api_server(
    prefect_server: PrefectServer, started: list[Process]
) -> Callable[..., tuple[Process, str]]:
    """Serve a step's api.py with uvicorn on a free port and wait until /health answers.
    Returns the process and the app's base URL, for example http://127.0.0.1:41234."""

    def start(step: Path, port: int | None = None, **env: str) -> tuple[Process, str]:
        process, url = prefect_server.spawn_api(step, port, **env)
        started.append(process)
        wait_until_answering(f"{url}/health", process)
        return process, url

    return start
