"""Step 17: a conftest.py to copy, and the tests it serves, run as a learner runs them; and
what prefect_test_harness does and does not do for background tasks, pinned."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from harness import clean_env, step_dir

from tutorial.runner import Process

STEP = step_dir(17)


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (say HOME=<a test's folder>)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_the_learners_suite_passes_and_leaves_nothing_behind(tmp_path):
    """submit.py runs the step's tests as `pytest tutorial/17_test_your_app` does, with a
    home of their own: they pass, stop their Prefect server and task server, and write
    nothing into the user's Prefect home."""
    home = tmp_path / "user-home"
    env = clean_env(HOME=str(home), PREFECT_HOME=str(home / ".prefect"))
    env.pop("PREFECT_API_URL", None)  # the suite starts its own server
    suite = Process("suite", [sys.executable, str(STEP / "submit.py")], env=env, echo=False)
    try:
        assert suite.wait(timeout=300) == 0, suite.output
    finally:
        suite.stop()

    assert re.search(r"^=+ 5 passed", suite.output, re.M), suite.output
    assert processes_with(f"HOME={home}") == []
    written = [p for p in (home / ".prefect").rglob("*") if p.is_file()]
    assert [p for p in written if "storage" in p.parts] == [], written


# What prefect_test_harness does, in a process of its own (it changes the process's settings).
HARNESS_FACTS = """
import json, os, sys
from pathlib import Path
import httpx
from prefect import task
from prefect.settings import PREFECT_API_URL, PREFECT_HOME
from prefect.testing.utilities import prefect_test_harness

@task
def add_one(n: int) -> int:
    return n + 1

home_before = str(PREFECT_HOME.value())
storage = Path(home_before) / "storage"
with prefect_test_harness(server_startup_timeout=120):
    api_url = PREFECT_API_URL.value()
    future = add_one.delay(1)
    run = httpx.get(f"{api_url}/task_runs/{future.task_run_id}").json()
    workers = httpx.post(f"{api_url}/task_workers/filter", json={}).json()
    facts = {
        "api_url": api_url,
        "env_api_url": os.environ.get("PREFECT_API_URL"),
        "home_before": home_before,
        "home_inside": str(PREFECT_HOME.value()),
        "files_in_home_storage": len(list(storage.rglob("*"))) if storage.exists() else 0,
        "state": run["state"]["type"],
        "task_servers": len(workers),
    }
print("FACTS " + json.dumps(facts))
"""


def test_what_prefect_test_harness_does_for_background_tasks(tmp_path):
    home = tmp_path / "user-home"
    env = clean_env(HOME=str(home), PREFECT_HOME=str(home / ".prefect"))
    env.pop("PREFECT_API_URL", None)
    script = Process("harness", [sys.executable, "-c", HARNESS_FACTS], env=env, echo=False)
    try:
        assert script.wait(timeout=300) == 0, script.output
    finally:
        script.stop()
    (line,) = [line for line in script.output.splitlines() if line.startswith("FACTS ")]
    facts = json.loads(line.removeprefix("FACTS "))

    # It does: start a real Prefect server (SQLite, in a temporary folder) on a free port,
    # and point this process at it, so .delay() creates real runs there.
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", facts["api_url"])
    assert facts["state"] == "SCHEDULED"
    # It does not: run them (no task server: the run waits), tell child processes where the
    # server is (the environment is untouched), or move your Prefect home, where .delay()
    # wrote the run's parameters file.
    assert facts["task_servers"] == 0
    assert facts["env_api_url"] is None
    assert facts["home_inside"] == facts["home_before"] == str(home / ".prefect")
    assert facts["files_in_home_storage"] >= 1
    assert processes_with(f"HOME={home}") == []
