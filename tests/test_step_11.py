"""Step 11: nothing is lost when a task server dies or the Prefect server restarts.

The tests that restart a Prefect server or run recover.py use servers of their own, so the
session's server and the other steps' runs are never touched."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import (
    SERVER_START_TIMEOUT,
    PrefectServer,
    clean_env,
    load_module,
    step_dir,
    wait_for,
)

from tutorial.runner import Process, free_port, server_is_up, wait_until_subscribed

STEP = step_dir(11)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Submits one job per order id given, from the tasks.py in the folder given first.
SUBMITTER = """\
import sys

sys.path.insert(0, sys.argv[1])
from tasks import charge_order

for order_id in sys.argv[2:]:
    future = charge_order.delay(order_id, 100)
    print(f"submitted {order_id} {future.task_run_id}", flush=True)
"""


# --- a Prefect server of our own, which a test may restart ---------------------------


def _serve(server: PrefectServer, port: int, log_name: str) -> Process:
    argv = [sys.executable, "-m", "prefect", "server", "start"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    log_file = server.home / log_name
    process = Process("server", argv, env=server.env, log_file=log_file)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not server_is_up(server.api_url):
        if not process.running() or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"Prefect server did not start:\n{log_file.read_text()}")
        time.sleep(0.25)
    return process


@contextmanager
def own_server(home: Path, **settings: str) -> Iterator[PrefectServer]:
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = clean_env(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), **settings)
    server = PrefectServer(api_url, home, None, env)
    server.port = port
    server.restarts = 0
    server.process = _serve(server, port, "server.log")
    try:
        yield server
    finally:
        server.process.stop()


def restart(server: PrefectServer) -> None:
    """Stop the server and start it again on the same port and home (same database)."""
    server.process.stop()
    server.restarts += 1
    server.process = _serve(server, server.port, f"server-{server.restarts}.log")


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with own_server(tmp_path_factory.mktemp("reliability-home")) as server:
        yield server


# --- helpers -----------------------------------------------------------------------------


def state(server: PrefectServer, run_id: str) -> str | None:
    # None for a moment while the server writes a run's new state (step 02's lesson).
    state = server.task_run(run_id)["state"]
    return state and state["type"]


def submit(server, started, tmp_path, *orders, tasks_dir=STEP, **env) -> Process:
    script = tmp_path / "submitter.py"
    script.write_text(SUBMITTER)
    process = Process(
        "submitter",
        [sys.executable, str(script), str(tasks_dir), *orders],
        env={**server.env, **env},
        echo=False,
    )
    started.append(process)
    return process


def submitted(process: Process, order_id: str, timeout: float = 120) -> str:
    return process.wait_for_line(rf"^submitted {order_id} ({UUID})$", timeout).group(1)


def ledger(path: Path, prefix: str = "") -> tuple[dict[str, int], dict[str, int]]:
    """(payments per order, executions per order) recorded by charge_order, for the orders
    whose id starts with `prefix`."""
    like = (f"{prefix}%",)
    with sqlite3.connect(path) as db:
        payments = dict(
            db.execute(
                "SELECT order_id, COUNT(*) FROM payments WHERE order_id LIKE ? GROUP BY 1", like
            )
        )
        attempts = dict(
            db.execute(
                "SELECT order_id, COUNT(*) FROM attempts WHERE order_id LIKE ? GROUP BY 1", like
            )
        )
    return payments, attempts


def start_task_server(server, started, **env) -> Process:
    process = server.spawn(STEP / "task_server.py", **env)
    started.append(process)
    wait_until_subscribed(server.api_url, process)
    return process


def recover(server, started, *args: str) -> Process:
    """Start recover.py with these flags; with --once, wait for its pass to end."""
    argv = [sys.executable, str(STEP / "recover.py"), *args]
    process = Process("recover", argv, env=server.env, echo=False)
    started.append(process)
    if "--once" in args:
        assert process.wait(timeout=120) == 0, process.output
    return process


def history(server: PrefectServer, run_id: str) -> list[str]:
    return server.state_names(run_id)


# --- graceful shutdown ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_task_server_after_its_runs_finish(
    prefect_server, task_server, started, tmp_path, sig
):
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    server = task_server(STEP / "task_server.py", PAYMENT_LATENCY="4", **env)
    submitter = submit(prefect_server, started, tmp_path, "a-1", "a-2")
    first, second = submitted(submitter, "a-1"), submitted(submitter, "a-2")
    for run_id in (first, second):
        server.wait_for_line(rf"Submitting task run .*{run_id}", timeout=60)

    os.kill(server.pid, sig)
    server.wait_for_line(r"Stopping: no new runs; waiting for 2 in flight", timeout=10)
    late = submitted(submit(prefect_server, started, tmp_path, "a-3"), "a-3")
    # Another task server, started while the first one drains, takes the late run.
    task_server(STEP / "task_server.py", **env)

    assert server.wait(timeout=60) == 0, server.output
    assert "Stopped: every run it took has finished" in server.output
    # The final states reached the API before the process exited.
    for run_id in (first, second):
        wait_for(lambda r=run_id: state(prefect_server, r) == "COMPLETED", timeout=30, what=run_id)
        assert history(prefect_server, run_id) == ["Scheduled", "Pending", "Running", "Completed"]
    # The run submitted after the signal was not taken by the stopping task server.
    wait_for(lambda: state(prefect_server, late) == "COMPLETED", timeout=60, what="the late run")
    assert late not in server.output
    assert history(prefect_server, late) == ["Scheduled", "Pending", "Running", "Completed"]
    payments, attempts = ledger(tmp_path / "ledger.db")
    assert payments == attempts == {"a-1": 1, "a-2": 1, "a-3": 1}


def test_a_run_that_outlasts_the_grace_period_is_left_running(
    prefect_server, task_server, started, tmp_path
):
    env = {"LEDGER_DB": str(tmp_path / "ledger.db"), "TASK_SERVER_GRACE": "2"}
    server = task_server(STEP / "task_server.py", PAYMENT_LATENCY="30", **env)
    run_id = submitted(submit(prefect_server, started, tmp_path, "g-1"), "g-1")
    server.wait_for_line(rf"Submitting task run .*{run_id}", timeout=60)

    os.kill(server.pid, signal.SIGTERM)

    assert server.wait(timeout=60) == 1, server.output
    assert "1 runs still running after 2 s" in server.output
    wait_for(lambda: state(prefect_server, run_id) == "RUNNING", timeout=30, what=run_id)
    assert not (tmp_path / "ledger.db").exists()  # the charge never happened
    # Stranded for good: delete it, so that no reconciler on this server charges it later.
    prefect_server.request("DELETE", f"/task_runs/{run_id}").raise_for_status()


# --- what Prefect does not recover by itself, and what recover.py does -----------------


def test_a_killed_task_server_strands_its_runs_until_recover_requeues_them(own, started, tmp_path):
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    doomed = start_task_server(own, started, PAYMENT_LATENCY="60", **env)
    submitter = submit(own, started, tmp_path, "k-1", "k-2")
    stranded = [submitted(submitter, "k-1"), submitted(submitter, "k-2")]
    for run_id in stranded:
        # Killed before its Running event reaches the server, a run would still show Scheduled.
        wait_for(lambda r=run_id: state(own, r) == "RUNNING", timeout=60, what=run_id)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)

    # Another task server takes new runs, but nothing delivers the killed server's again.
    start_task_server(own, started, **env)
    fresh = submitted(submit(own, started, tmp_path, "k-3"), "k-3")
    wait_for(lambda: state(own, fresh) == "COMPLETED", timeout=60, what="a fresh run")
    assert [state(own, run_id) for run_id in stranded] == ["RUNNING", "RUNNING"]

    reconciler = recover(own, started, "--once", "--running-after", "0")
    for run_id in stranded:
        assert re.search(rf"{run_id}: re-enqueued \((Pending|Running) since", reconciler.output)
        wait_for(lambda r=run_id: state(own, r) == "COMPLETED", timeout=60, what=run_id)
        names = history(own, run_id)
        assert names[:2] == ["Scheduled", "Pending"] and names[-1] == "Completed", names
        assert "Requeued" in names, names
    assert fresh not in reconciler.output  # a Completed run is never touched
    payments, attempts = ledger(tmp_path / "ledger.db", "k-")
    # The killed server died before its payments: each order was charged once.
    assert payments == attempts == {"k-1": 1, "k-2": 1, "k-3": 1}


def test_a_server_restart_strands_scheduled_runs_until_recover_requeues_them(
    own, started, tmp_path
):
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    submitter = submit(own, started, tmp_path, "r-1", "r-2", "r-3")
    queued = [submitted(submitter, f"r-{n}") for n in (1, 2, 3)]
    assert submitter.wait(timeout=60) == 0

    restart(own)  # the queue of scheduled runs lived in the old server's memory

    start_task_server(own, started, **env)
    fresh = submitted(submit(own, started, tmp_path, "r-4"), "r-4")
    wait_for(lambda: state(own, fresh) == "COMPLETED", timeout=60, what="a fresh run")
    assert [history(own, run_id) for run_id in queued] == [["Scheduled"]] * 3

    # No run comes after them: the task server is idle while they are still Scheduled.
    reconciler = recover(own, started, "--scheduled-after", "2", "--interval", "0.5")
    for run_id in queued:
        wait_for(lambda r=run_id: state(own, r) == "COMPLETED", timeout=60, what=run_id)
        assert history(own, run_id) == ["Scheduled", "Requeued", "Pending", "Running", "Completed"]
        assert f"{run_id}: re-enqueued (Scheduled since" in reconciler.output
    payments, attempts = ledger(tmp_path / "ledger.db", "r-")
    assert payments == attempts == {f"r-{n}": 1 for n in (1, 2, 3, 4)}


def test_runs_nobody_serves_are_reported_not_requeued(own, started, tmp_path):
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    start_task_server(own, started, **env)
    # The submitter runs another version of tasks.py: its task key differs.
    other = tmp_path / "other_version"
    other.mkdir()
    (other / "tasks.py").write_text("\n" + (STEP / "tasks.py").read_text())
    submitter = submit(own, started, tmp_path, "u-1", tasks_dir=other, **env)
    run_id = submitted(submitter, "u-1")
    key = own.task_run(run_id)["task_key"]

    reconciler = recover(own, started, "--once", "--scheduled-after", "0")

    assert f"no task server serves {key} right now: 1 runs left as they are" in (reconciler.output)
    assert run_id not in reconciler.output
    assert history(own, run_id) == ["Scheduled"]
    own.request("DELETE", f"/task_runs/{run_id}").raise_for_status()


def deliveries(server: PrefectServer, run_id: str) -> int:
    """How many times a task server received the run: each delivery starts with Pending."""
    return history(server, run_id).count("Pending")


def test_a_backlog_waits_and_each_run_is_delivered_once(own, started, tmp_path):
    """Runs that wait behind others are not lost: recover.py leaves them in the queue, though
    the backlog is four to eight times longer than the thresholds it is given."""
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    reconciler = recover(
        own, started, "--scheduled-after", "1", "--running-after", "2", "--interval", "0.5"
    )
    orders = [f"b-{n:02d}" for n in range(16)]
    submitter = submit(own, started, tmp_path, *orders)
    run_ids = [submitted(submitter, order_id) for order_id in orders]
    # One task server, one run at a time, 0.5 s each: the last run waits 8 s or more.
    start_task_server(own, started, TASK_SERVER_LIMIT="1", PAYMENT_LATENCY="0.5", **env)
    for run_id in run_ids:
        wait_for(lambda r=run_id: state(own, r) == "COMPLETED", timeout=120, what=run_id)

    counts = [deliveries(own, run_id) for run_id in run_ids]
    print(f"backlog: {len(run_ids)} jobs, {sum(counts)} deliveries")
    assert "re-enqueued (" not in reconciler.output, reconciler.output
    assert counts == [1] * len(run_ids)
    payments, attempts = ledger(tmp_path / "ledger.db", "b-")
    assert payments == attempts == {order_id: 1 for order_id in orders}


def test_a_long_run_is_left_alone_while_its_task_server_sends_heartbeats(own, started, tmp_path):
    """A run Running longer than --running-after is not lost while its task server is alive:
    the heartbeats task_server.py sends for it say so."""
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    start_task_server(own, started, PAYMENT_LATENCY="14", TASK_SERVER_HEARTBEAT="1", **env)
    # Heartbeats reach the API within the event persister's flush (5 s) after they are sent.
    reconciler = recover(own, started, "--running-after", "8", "--interval", "1")
    reconciler.wait_for_line(r"pass: ", timeout=120)
    run_id = submitted(submit(own, started, tmp_path, "h-1"), "h-1")
    wait_for(lambda: state(own, run_id) == "RUNNING", timeout=60, what=run_id)
    running = time.monotonic()

    # A pass that came after the run had been Running for longer than --running-after.
    wait_for(lambda: time.monotonic() - running > 9, timeout=30)
    passes = reconciler.output.count("pass: 1 unfinished")
    wait_for(
        lambda: reconciler.output.count("pass: 1 unfinished") > passes,
        timeout=30,
        what="a pass while the run had been Running for 9 s",
    )
    wait_for(lambda: state(own, run_id) == "COMPLETED", timeout=60, what=run_id)
    assert reconciler.wait_for_line(r"pass: 0 unfinished", timeout=30)
    assert run_id not in reconciler.output
    assert history(own, run_id) == ["Scheduled", "Pending", "Running", "Completed"]
    payments, attempts = ledger(tmp_path / "ledger.db", "h-")
    assert payments == attempts == {"h-1": 1}


FOREGROUND = """\
import sys

sys.path.insert(0, sys.argv[1])
from tasks import charge_order

charge_order(sys.argv[2], 100)  # in the foreground, outside any flow
"""


def test_a_task_called_in_the_foreground_is_never_requeued(own, started, tmp_path):
    """A task called directly outside a flow also makes a task run with no flow run, but it
    has no queue and no parameters stored: a run left unfinished is not recover.py's."""
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    start_task_server(own, started, **env)  # it serves the same task key

    def running() -> set[str]:
        runs = own.api("POST", "/task_runs/filter", json={"sort": "ID_DESC", "limit": 200})
        return {r["id"] for r in runs if r["state_type"] == "RUNNING"}

    script = tmp_path / "foreground.py"
    script.write_text(FOREGROUND)
    before = running()
    caller = Process(
        "foreground",
        [sys.executable, str(script), str(STEP), "f-1"],
        env={**own.env, "PAYMENT_LATENCY": "60", **env},
        echo=False,
    )
    started.append(caller)
    (run_id,) = wait_for(lambda: running() - before, timeout=60, what="the foreground run")
    os.kill(caller.pid, signal.SIGKILL)  # it stays Running for good
    caller.wait(timeout=10)

    reconciler = recover(own, started, "--once", "--scheduled-after", "0", "--running-after", "0")

    assert run_id not in reconciler.output
    assert history(own, run_id) == ["Pending", "Running"]
    own.request("DELETE", f"/task_runs/{run_id}").raise_for_status()


def test_requeue_leaves_a_run_alone_while_the_server_writes_its_state(own, started, tmp_path):
    """On SQLite a run reads with no state for a moment while the server records its new
    one (step 08): recover.py skips it this pass instead of failing the whole pass."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    start_task_server(own, started, PAYMENT_LATENCY="2", **env)
    run_id = submitted(submit(own, started, tmp_path, "n-1"), "n-1")
    wait_for(lambda: state(own, run_id) == "RUNNING", timeout=60, what=run_id)
    recover_py = load_module(STEP / "recover.py", "recover_11")

    async def requeue_run_read_before():
        async with get_client() as client:
            running = await client.read_task_run(run_id)  # what a pass read as stranded
            with own.states_held_back(f"NEW.task_run_id = '{run_id}'"):
                wait_for(lambda: own.task_run(run_id)["state"] is None, timeout=60)
                return await recover_py.requeue(client, running)

    with temporary_settings({PREFECT_API_URL: own.api_url}):
        assert asyncio.run(requeue_run_read_before()) is False
    wait_for(lambda: state(own, run_id) == "COMPLETED", timeout=60, what=run_id)
    assert history(own, run_id) == ["Scheduled", "Pending", "Running", "Completed"]


def test_a_running_run_whose_next_state_is_not_recorded_yet_is_left_alone(own):
    """Run states reach the database as events, and the task-run recorder can fall behind the
    event persister. A run that reads Running with no news for --running-after, but whose next
    state the server has stored as an event, is not lost."""
    from pinned_tasks import unserved
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    recover_py = load_module(STEP / "recover.py", "recover_11")

    async def silent() -> tuple[bool, bool]:
        async with get_client() as client:
            runs = [
                await unserved.create_run(client=client, parameters={"n": n}, deferred=True)
                for n in (1, 2)
            ]
            for run in runs:
                await client.set_task_run_state(run.id, Running(), force=True)
            try:
                return await check_silent(client, *runs)
            finally:
                for run in runs:
                    await client.delete_task_run(run.id)

    async def check_silent(client, *runs) -> tuple[bool, bool]:
        completed, quiet = [await client.read_task_run(run.id) for run in runs]
        # The first one's Completed as an event only, 1 s after its Running: the task-run
        # recorder writes states from events that say they come from a client, so it leaves
        # this one alone.
        occurred = completed.state.timestamp + timedelta(seconds=1)
        wait_for(lambda: datetime.now(UTC) > occurred, timeout=5)
        event = {
            "id": str(uuid.uuid4()),
            "occurred": occurred.isoformat(),
            "event": "prefect.task-run.Completed",
            "resource": {"prefect.resource.id": f"prefect.task-run.{completed.id}"},
        }
        (await client.request("POST", "/events", json=[event])).raise_for_status()
        resource = {"resource": {"id": [event["resource"]["prefect.resource.id"]]}}
        wait_for(
            lambda: own.api("POST", "/events/filter", json={"filter": resource})["events"],
            timeout=60,
            what="the event to be stored",
        )
        assert own.state_type(str(completed.id)) == "RUNNING"
        # --running-after half-way between the Running state's age and the event's: the
        # state is older than that, the event newer.
        now = datetime.now(UTC)
        running_after = ((now - completed.state.timestamp) + (now - occurred)) / 2
        opts = argparse.Namespace(
            scheduled_after=120, running_after=running_after.total_seconds(), interval=10
        )
        check = recover_py.Pass(client, opts, seen={})
        return await check.silent(completed), await check.silent(quiet)

    with temporary_settings({PREFECT_API_URL: own.api_url}):
        assert asyncio.run(silent()) == (False, True)


# --- the lesson: submit.py ---------------------------------------------------------------


def test_submit_py_recovers_the_runs_of_the_task_server_it_kills(own, started, tmp_path):
    """submit.py starts recover.py and a second task server, kills that one in the middle of
    its runs, and every payment still completes, each order charged once."""
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    # The task server `uv run tutorial 11` starts, here one run at a time and 1 s each, so
    # that the second task server surely takes some of the six runs before it is killed.
    start_task_server(own, started, TASK_SERVER_LIMIT="1", PAYMENT_LATENCY="1", **env)
    submit_py = own.spawn(STEP / "submit.py", **env)
    started.append(submit_py)
    assert submit_py.wait(timeout=300) == 0, submit_py.output

    assert re.search(r"^killed the second task server \(pid \d+\)", submit_py.output, re.M)
    lines = re.findall(r"^(order-\w+-\d): charged  \((.+)\)$", submit_py.output, re.M)
    assert [order_id[-1] for order_id, _ in lines] == list("123456"), submit_py.output
    payments, attempts = ledger(tmp_path / "ledger.db", "order-")
    # The killed server died before its payments: each order was charged once.
    assert payments == attempts == {order_id: 1 for order_id, _ in lines}
    histories = [shown.split(", ") for _, shown in lines]
    lost = ["Scheduled", "Pending", "Running", "Requeued", "Pending", "Running", "Completed"]
    assert all(h in (lost, ["Scheduled", "Pending", "Running", "Completed"]) for h in histories)
    assert lost in histories, submit_py.output  # the killed task server's runs came back


# --- a full queue blocks the submitter ---------------------------------------------------


def test_a_full_queue_blocks_delay_until_a_task_server_drains_it(
    tmp_path_factory, started, tmp_path
):
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    home = tmp_path_factory.mktemp("small-queue-home")
    with own_server(home, PREFECT_SERVER_TASKS_SCHEDULING_MAX_SCHEDULED_QUEUE_SIZE="5") as server:
        orders = [f"q-{n}" for n in range(1, 9)]
        submitter = submit(server, started, tmp_path, *orders)
        run_ids = [submitted(submitter, order_id) for order_id in orders[:5]]
        # The sixth .delay() waits for room in the queue: it does not fail, it blocks.
        with pytest.raises(TimeoutError):
            submitted(submitter, "q-6", timeout=8)
        assert submitter.running()

        start_task_server(server, started, **env)
        run_ids += [submitted(submitter, order_id) for order_id in orders[5:]]
        assert submitter.wait(timeout=120) == 0, submitter.output
        for run_id in run_ids:
            wait_for(lambda r=run_id: state(server, r) == "COMPLETED", timeout=60, what=run_id)
    payments, attempts = ledger(tmp_path / "ledger.db")
    assert payments == attempts == {order_id: 1 for order_id in orders}


# --- chaos: task servers killed and the Prefect server restarted while jobs run ----------


def applied(path: Path, prefix: str) -> dict[str, int]:
    """How many executions of each order's job changed the ledger (charged the card)."""
    with sqlite3.connect(path) as db:
        query = "SELECT order_id, SUM(applied) FROM attempts WHERE order_id LIKE ? GROUP BY 1"
        return dict(db.execute(query, (f"{prefix}%",)))


def test_chaos_loses_nothing_and_charges_nothing_twice(own, started, tmp_path):
    """Two task servers killed with runs in flight, the Prefect server restarted with runs
    still queued, two reconcilers at once: every job completes, each order charged once."""
    env = {"LEDGER_DB": str(tmp_path / "ledger.db")}
    fast = ["--scheduled-after", "5", "--running-after", "8", "--interval", "1"]
    for _ in range(2):
        recover(own, started, *fast)
    # One task server that survives, two at a time, so that a backlog forms behind it; two
    # that die with runs in flight (their payments take 2 s).
    servers = [own.spawn(STEP / "task_server.py", TASK_SERVER_LIMIT="2", **env)]
    doomed = [
        own.spawn(STEP / "task_server.py", PAYMENT_LATENCY="2", TASK_SERVER_HEARTBEAT="1", **env)
        for _ in range(2)
    ]
    started.extend(servers + doomed)
    for server in servers + doomed:
        wait_until_subscribed(own.api_url, server)

    orders = [f"c-{n:02d}" for n in range(40)]
    submitter = submit(own, started, tmp_path, *orders)
    run_ids = [submitted(submitter, order_id) for order_id in orders]
    for server in doomed:
        server.wait_for_line(r"Submitting task run", timeout=60)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    restart(own)  # whatever was still queued lived in the old server's memory

    for run_id in run_ids:
        wait_for(lambda r=run_id: state(own, r) == "COMPLETED", timeout=180, what=run_id)
    requeued = [run_id for run_id in run_ids if "Requeued" in history(own, run_id)]
    print(f"chaos: {len(orders)} jobs, {len(requeued)} re-enqueued")
    assert requeued  # the killed task servers' runs, at least
    payments, attempts = ledger(tmp_path / "ledger.db", "c-")
    assert payments == {order_id: 1 for order_id in orders}
    # However often a job ran, only one execution charged the card.
    assert applied(tmp_path / "ledger.db", "c-") == {order_id: 1 for order_id in orders}
    assert set(attempts) == set(orders)
