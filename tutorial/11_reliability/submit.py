"""Six payments; a task server dies in the middle of its runs; recover.py puts them back."""

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from prefect import get_client

from tutorial.waiting import result_of  # future.result() without its Prefect 3.9 gaps (step 02)

from tasks import charge_order

HERE = Path(__file__).parent


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.2)


def task_servers(client) -> set[str]:
    """The task servers subscribed right now, by id: "<hostname>-<pid>"."""
    workers = client.request("POST", "/task_workers/filter", json={}).json()
    return {worker["identifier"] for worker in workers}


def states(client, futures) -> set[str]:
    return {client.read_task_run(future.task_run_id).state_name for future in futures}


if __name__ == "__main__":
    # region lesson
    # The reconciler, with thresholds short enough to watch it work (in production: minutes).
    fast = ["--scheduled-after", "10", "--running-after", "10", "--interval", "2"]
    recover = subprocess.Popen([sys.executable, HERE / "recover.py", *fast])
    # A second task server whose payment provider hangs: it dies in the middle of its runs.
    slow = {"PAYMENT_LATENCY": "60", "TASK_SERVER_HEARTBEAT": "1"}
    doomed = subprocess.Popen([sys.executable, HERE / "task_server.py"], env=os.environ | slow)
    try:
        with get_client(sync_client=True) as client:
            doomed_id = f"{socket.gethostname()}-{doomed.pid}"
            wait_until(lambda: doomed_id in task_servers(client), "no second task server")
            batch = uuid.uuid4().hex[:8]
            futures = [charge_order.delay(f"order-{batch}-{n}", 100 * n) for n in range(1, 7)]
            # The first task server ends its runs within a second; the doomed one's hang.
            wait_until(lambda: states(client, futures) <= {"Completed", "Running"}, "no start")
            doomed.kill()  # SIGKILL, like a crash or the OOM killer: its runs stay Running
            print(f"killed the second task server (pid {doomed.pid}) in the middle of its runs")
            for future in futures:
                outcome = result_of(future, timeout=120)  # "order-...: charged"
                history = [s.name for s in client.read_task_run_states(future.task_run_id)]
                print(f"{outcome}  ({', '.join(history)})")
    finally:
        for process in (recover, doomed):
            process.terminate()
            process.wait()
    # endregion lesson
