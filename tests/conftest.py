from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import PrefectServer

from tutorial.runner import Process


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One real Prefect server for the whole session, on a free port, with its own home."""
    with PrefectServer.start(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


@pytest.fixture
def spawn(prefect_server: PrefectServer) -> Iterator[Callable[..., Process]]:
    """Start a step's script in the background; what still runs is stopped after the test."""
    started: list[Process] = []

    def start(script: Path, **env: str) -> Process:
        started.append(process := prefect_server.spawn(script, **env))
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def task_server(prefect_server: PrefectServer) -> Iterator[Callable[..., Process]]:
    """Start a step's task server and wait until it has subscribed; stop all after the test."""
    started: list[Process] = []

    def start(script: Path, **env: str) -> Process:
        started.append(process := prefect_server.start_task_server(script, **env))
        return process

    yield start
    for process in started:
        process.stop()
