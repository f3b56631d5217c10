"""Submit jobs while task servers are killed mid-run; recover.py puts their runs back."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.objects import StateType

from tasks import LEDGER, charge_order, ledger

HERE = Path(__file__).parent
LOGS = LEDGER.parent / "reliability-logs"
JOBS = int(os.environ.get("JOBS", "200"))
# Read state_type, not state: on SQLite a run has no state for a moment while the server
# records a new one (step 08), but its state_type already names the new one.
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
# Jobs take 2 s at most: a run in flight with no news for 15 s (three heartbeats missed) is
# lost; a run Scheduled for less than 10 s is never touched.
RECOVER = ["--scheduled-after", "10", "--running-after", "15", "--interval", "2"]


def start(log: str, script: str, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        env={**os.environ, **env},
        stdout=(LOGS / log).open("w"),
        stderr=subprocess.STDOUT,
    )


def subscribed(process: subprocess.Popen) -> bool:
    with get_client(sync_client=True) as client:
        workers = client.request("POST", "/task_workers/filter", json={}).json()
    return f"{socket.gethostname()}-{process.pid}" in {w["identifier"] for w in workers}


def delay(order_id: str, amount_cents: int):
    """Submit one job; if the Prefect server does not answer, submit it again."""
    for attempt in range(30):
        try:
            return charge_order.delay(order_id, amount_cents)
        except Exception as exc:  # the Prefect server restarting, for example
            print(f"  submitting {order_id} failed ({type(exc).__name__}); trying again")
            time.sleep(min(2**attempt, 5))
    raise RuntimeError(f"could not submit {order_id}")


def read_runs(run_ids: list) -> list:
    with get_client(sync_client=True) as client:
        return [
            run
            for i in range(0, len(run_ids), 200)
            for run in client.read_task_runs(
                task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=run_ids[i : i + 200])),
                limit=200,
            )
        ]


def requeued(run_ids: list) -> int:
    """How many runs recover.py put back in the queue: their history shows it."""
    with get_client(sync_client=True) as client:
        return sum(
            any(s.name == "Requeued" for s in client.read_task_run_states(run_id))
            for run_id in run_ids
        )


def main(victims: list[subprocess.Popen]) -> int:
    kill_after = [JOBS // 5, JOBS // 2]
    deadline = time.monotonic() + 120
    while not all(subscribed(victim) for victim in victims):
        if time.monotonic() > deadline or any(victim.poll() is not None for victim in victims):
            print("the extra task servers did not subscribe")
            return 1
        time.sleep(0.5)
    print(f"started recover.py and 2 extra task servers (pids {victims[0].pid} {victims[1].pid})")

    def kill_victims(submitted: int) -> int:
        """Kill each victim once enough jobs are submitted and it has runs in flight."""
        for n, victim in enumerate(victims):
            log = (LOGS / f"victim_{n + 1}.log").read_text()
            in_flight = log.count("Submitting task run") - log.count("Finished in state")
            if victim.poll() is None and submitted >= kill_after[n] and in_flight > 0:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                print(
                    f"  killed task server {victim.pid} (SIGKILL) with {in_flight} runs in flight"
                )
        return sum(victim.poll() is not None for victim in victims)

    batch = uuid.uuid4().hex[:8]  # new order ids every time this script runs
    orders = [f"order-{batch}-{n:03d}" for n in range(JOBS)]
    began = time.monotonic()
    run_ids = []
    for n, order_id in enumerate(orders):
        run_ids.append(delay(order_id, 100 + n).task_run_id)
        killed = kill_victims(n + 1)
    print(f"submitted {JOBS} jobs in {time.monotonic() - began:.0f} s")

    deadline = time.monotonic() + 300
    finished = 0
    while time.monotonic() < deadline:
        killed = kill_victims(JOBS)
        try:
            finished = sum(run.state_type in FINAL for run in read_runs(run_ids))
        except Exception as exc:
            print(f"  reading the runs failed ({type(exc).__name__}); trying again")
        if finished == JOBS and killed == len(victims):
            break
        time.sleep(2)
    print(f"{finished} of {JOBS} runs final after {time.monotonic() - began:.0f} s")

    completed = sum(run.state_type == StateType.COMPLETED for run in read_runs(run_ids))
    db = ledger()
    mine = (f"order-{batch}-%",)
    charged = db.execute("SELECT COUNT(*) FROM payments WHERE order_id LIKE ?", mine).fetchone()[0]
    runs_per_order = db.execute(
        "SELECT COUNT(*) FROM attempts WHERE order_id LIKE ? GROUP BY order_id", mine
    ).fetchall()
    applied = db.execute(
        "SELECT COALESCE(SUM(applied), 0) FROM attempts WHERE order_id LIKE ?", mine
    ).fetchone()[0]
    db.close()
    lost = JOBS - charged
    double = applied - charged  # an order charged by more than one execution

    print(f"jobs submitted:       {JOBS}")
    print(f"task servers killed:  {killed}")
    print(f"runs re-enqueued:     {requeued(run_ids)}")
    print(f"runs Completed:       {completed}")
    print(f"jobs lost:            {lost}")
    print(f"jobs run twice:       {sum(count > 1 for (count,) in runs_per_order)}")
    print(f"double charges:       {double}")
    return 0 if killed == 2 and completed == JOBS and lost == 0 and double == 0 else 1


if __name__ == "__main__":
    LOGS.mkdir(parents=True, exist_ok=True)
    print(f"logs of the processes this script starts: {LOGS}")
    reconciler = start("recover.log", "recover.py", *RECOVER)
    # Two more task servers, doomed: each is killed with SIGKILL in the middle of its runs.
    # Their payment provider is slow (2 s), so they surely have runs in flight then.
    victims = [start(f"victim_{n}.log", "task_server.py", PAYMENT_LATENCY="2") for n in (1, 2)]
    try:
        sys.exit(main(victims))
    finally:
        for process in [reconciler, *victims]:
            process.terminate()
            process.wait()
