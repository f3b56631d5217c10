"""A rolling deploy on one machine: the previous release's app and task server are running
and busy, this release's task server is up (the tutorial started task_server.py), the app
switches to this release, the old task server drains, then stops. Nothing is stranded."""

import asyncio
import importlib.util
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prefect.settings import get_current_settings

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from drain import drain
from tasks import make_thumbnail

PREVIOUS = Path(__file__).resolve().parent / "previous"


def load_previous_release():
    spec = importlib.util.spec_from_file_location("previous_tasks", PREVIOUS / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_previous_task_server() -> subprocess.Popen:
    """The previous release's task server, as your servers still run it; ready once listed.
    Its output is left out here: run previous/task_server.py by hand to see it."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen([sys.executable, str(PREVIOUS / "task_server.py")], **quiet)
    api, me = get_current_settings().api.url, f"{socket.gethostname()}-{server.pid}"
    deadline = time.monotonic() + 120
    while not any(w["identifier"] == me for w in httpx.post(f"{api}/task_workers/filter").json()):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the previous release's task server did not start")
        time.sleep(0.2)
    return server


# region deploy
if __name__ == "__main__":
    old = load_previous_release().make_thumbnail
    old_server = start_previous_task_server()
    print(f"previous release: {old.task_key}, this release: {make_thumbnail.task_key}")

    # Before the deploy: the previous app's runs, some running, most still queued.
    before = [old.delay(f"photo-{n}.jpg") for n in range(8)]
    # The deploy: this release's task servers are up; the app now submits this release's runs.
    after = [make_thumbnail.delay(f"photo-{n}.jpg") for n in range(8, 12)]
    # Nothing submits the old key any more: wait until its runs are done, then stop its servers.
    if not asyncio.run(drain(old.task_key, timeout=120)):
        sys.exit("the previous release's runs did not drain: its task servers keep running")
    old_server.send_signal(signal.SIGTERM)  # nothing is in flight now: it stops at once
    old_server.wait(timeout=30)
    print("previous release's task server stopped")

    print("previous app's runs:", [result_of(f, timeout=60) for f in before][:2], "...")
    print("this app's runs:    ", [result_of(f, timeout=60) for f in after][:2], "...")
    # endregion deploy
