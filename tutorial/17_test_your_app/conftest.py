"""Fixtures to test an app that hands its work to Prefect background tasks. Copy this file
into your app's tests/ folder and change the three names below.

One real Prefect server for the whole session (prefect_test_harness, with a Prefect home of
its own), one real task server process for the whole session, and the app in the test
process itself (FastAPI's TestClient): the jobs really run, and the suite stays fast."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
from prefect.testing.utilities import prefect_test_harness

HERE = Path(__file__).resolve().parent
TASK_SERVER = HERE / "task_server.py"  # your task server's script
# Here the app is step 08's; in your repo, your app's module is importable already.
sys.path.append(str(HERE.parent / "08_fastapi_jobs"))
API_KEY = "test-key-of-at-least-16-characters"


# region server
@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> Iterator[str]:
    """A throwaway Prefect server (SQLite) for the session; its API URL.

    prefect_test_harness points this process at it, but keeps your Prefect home, where
    background tasks write their parameters and results: give the tests a home of their own.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    # A first start on a cold machine (a new SQLite database) can take most of a minute.
    with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
        # endregion server


# region task-server
@pytest.fixture(scope="session")
def task_server(prefect_api: str) -> Iterator[subprocess.Popen]:
    """Your task server, as a process of its own, subscribed before the first test runs.
    The harness set the API URL and home in this process only: hand them on explicitly."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(PREFECT_HOME.value())}
    process = subprocess.Popen([sys.executable, str(TASK_SERVER)], cwd=TASK_SERVER.parent, env=env)
    try:
        wait_until_subscribed(prefect_api, process)
        yield process
    finally:
        process.terminate()  # a run in flight finishes first
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # endregion task-server


def wait_until_subscribed(api_url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Ready once the Prefect API lists it (its id is '<hostname>-<pid>')."""
    identifier = f"{socket.gethostname()}-{process.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the task server exited with code {process.returncode}")
        workers = httpx.post(f"{api_url}/task_workers/filter", json={}, timeout=10).json()
        if any(worker["identifier"] == identifier for worker in workers):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the task server did not subscribe within {timeout} s")


# region app
@pytest.fixture
def client(prefect_api: str, tmp_path: Path, monkeypatch) -> Iterator[TestClient]:
    """The app, in this process, with one test client and a database of its own per test."""
    monkeypatch.setenv("JOBS_API_KEYS", f"tester={API_KEY}")
    monkeypatch.setenv("JOBS_DB", str(tmp_path / "jobs.db"))
    from api import app

    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client  # the app's lifespan ran: it holds one Prefect client, as in production
        # endregion app
