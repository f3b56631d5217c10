"""The one-command runner, driven as a user drives it: `tutorial ...` in a terminal."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
from harness import clean_env, free_port

from tutorial.runner import ROOT, Process, find_steps, port_is_free

TUTORIAL = str(Path(sys.executable).with_name("tutorial"))


def tutorial(*args: str, env: dict[str, str]) -> Process:
    return Process("tutorial", [TUTORIAL, *args], env=env, echo=False)


def local_env(home: Path, port: int, **extra: str) -> dict[str, str]:
    """Settings that make the runner start (and later stop) a throwaway server of its own."""
    return clean_env(
        PREFECT_HOME=str(home), PREFECT_API_URL=f"http://127.0.0.1:{port}/api", **extra
    )


def processes_using(home: Path) -> list[int]:
    """Pids of live processes whose environment names `home`: what the runner left behind."""
    marker = f"PREFECT_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_list_names_every_step():
    runner = tutorial("list", env=clean_env())
    assert runner.wait(timeout=60) == 0, runner.output
    names = [line.split()[0] for line in runner.output.splitlines()]
    assert names == [step.name for step in find_steps()]


def test_unknown_step_is_a_usage_error():
    runner = tutorial("99", env=clean_env())
    assert runner.wait(timeout=60) == 2
    assert "tutorial: error: unknown step '99'; the steps are: 01_" in runner.output


def test_runs_step_01_on_a_throwaway_server_and_leaves_nothing_running(tmp_path):
    port = free_port()
    runner = tutorial("1", env=local_env(tmp_path, port))
    assert runner.wait(timeout=300) == 0, runner.output

    out = runner.output
    assert f"Starting a local Prefect server at http://127.0.0.1:{port}" in out
    assert "=== Step 01: " in out
    assert "Task server subscribed" in out.splitlines()
    assert "Running submit.py" in out.splitlines()
    assert re.search(r"^\[task_server\] .*Received task run: ", out, re.M)
    assert "[submit] background: welcome email sent to grace@example.com" in out.splitlines()
    assert f"Step 01 done. Its runs in the UI: http://127.0.0.1:{port}/runs" in out
    assert "All done: 1 step ran." in out
    # The server kept its database in the home it was given, and is gone now.
    assert (tmp_path / "prefect.db").exists()
    assert port_is_free("127.0.0.1", port)
    assert processes_using(tmp_path) == []


# The runner runs every step the same way (task servers, then the app if the step has one,
# then submit.py), so one step of each shape goes through it here: several task servers (03),
# an app (08), an app with static files (09), an app loaded from another step's files (15).
# Step 01 runs on a throwaway server above, step 12 (its own stack) in tests/test_step_12.py,
# and every step's own tests run its scripts.
RUNNER_SHAPES = [s for s in find_steps() if s.number in (3, 8, 9, 15)]


@pytest.mark.parametrize("step", RUNNER_SHAPES, ids=lambda s: s.name)
def test_runs_each_kind_of_step_on_a_server_that_is_already_running(prefect_server, step):
    runner = tutorial(str(step.number), env=prefect_server.env)
    try:
        assert runner.wait(timeout=600) == 0, runner.output
    finally:
        runner.stop()
    assert f"Using the Prefect server already running at {prefect_server.api_url}" in runner.output
    assert "Starting a local Prefect server" not in runner.output
    assert f"Step {step.number:02d} done." in runner.output
    assert prefect_server.process.running()


def test_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    runner = tutorial("1", env=local_env(tmp_path, port))
    try:
        runner.wait_for_line(r"Task server subscribed", timeout=240)
        task_server_pid = int(runner.wait_for_line(r"task_server\.py \(pid (\d+)\)", 1).group(1))
        os.kill(runner.pid, signal.SIGINT)
        assert runner.wait(timeout=60) == 130, runner.output
    finally:
        runner.stop()
    assert "tutorial: interrupted; everything it started has been stopped" in runner.output
    with pytest.raises(ProcessLookupError):
        os.kill(task_server_pid, 0)
    assert port_is_free("127.0.0.1", port)
    assert processes_using(tmp_path) == []


def test_port_taken_by_something_else(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        runner = tutorial("1", env=local_env(tmp_path, port))
        assert runner.wait(timeout=60) == 1, runner.output
    assert f"tutorial: error: port {port} on 127.0.0.1 is taken by something that is not" in (
        runner.output
    )
    assert processes_using(tmp_path) == []


def test_server_that_will_not_start(tmp_path):
    # A database URL the server cannot open makes it exit during start-up.
    bad_db = f"sqlite+aiosqlite:///{tmp_path}/missing/folder/prefect.db"
    env = local_env(tmp_path, free_port(), PREFECT_SERVER_DATABASE_CONNECTION_URL=bad_db)
    runner = tutorial("1", env=env)
    assert runner.wait(timeout=240) == 1, runner.output
    assert "tutorial: error: the Prefect server exited with code" in runner.output
    assert "the end of its log (" in runner.output
    assert processes_using(tmp_path) == []


def test_reset_deletes_only_a_home_inside_the_repo(tmp_path):
    runner = tutorial("reset", env=clean_env(PREFECT_HOME=str(tmp_path)))
    assert runner.wait(timeout=60) == 1
    assert "it is not inside this repo" in runner.output
    assert tmp_path.exists()
    assert str(ROOT) not in str(tmp_path)
