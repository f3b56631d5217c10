"""Step 07: global concurrency and rate limits hold background runs back. When each run held
its slot is read from the run's log lines in the Prefect API."""

import re
import shutil
import sys
from datetime import datetime

from harness import UUID, most_at_once, step_dir, wait_for

from tutorial.runner import Process, wait_until_subscribed

STEP = step_dir(7)
# A run logs its start a moment after the server granted its slot; on a busy machine the
# moment reached a second (three starts logged within 0.45 s, the third granted 1 s after the
# first), so allow this much.
GRANT_TO_START = 1.0
# Two task servers start together this many times against limits that do not exist yet
# (without the retry on ObjectAlreadyExists, one of the two failed in 8 rounds of 8).
ROUNDS = 2


def rate_limit_violations(starts, limit, per_second):
    """Windows of starts that a bucket of `limit` slots, draining `per_second`, forbids.

    A rate-limited acquisition adds a slot; the server removes floor(decay * seconds since
    the limit's last update) at each update and never more, and grants only while the
    slots stay <= limit. So the grants in any stretch of t seconds that begins with a grant
    number at most limit + per_second * t. A start time is a grant time plus a little."""
    starts = sorted(starts)
    return [
        (i, j)
        for i in range(len(starts))
        for j in range(i, len(starts))
        if j - i + 1 > limit + per_second * (starts[j] - starts[i] + GRANT_TO_START)
    ]


def received(server, task_name, count):
    """The ids of the runs of `task_name` the task server received, once there are `count`."""
    pattern = re.compile(rf"Received task run: ({UUID}) - {task_name}$", re.M)
    return wait_for(lambda: pattern.findall(server.output), lambda ids: len(ids) >= count)


def logged(prefect_server, run_ids, pattern: str) -> dict[str, datetime]:
    """{what the pattern's group matched: when} for the runs' log lines that match it."""
    regex = re.compile(pattern)

    def read() -> dict[str, datetime]:
        logs = prefect_server.api(
            "POST", "/logs/filter", json={"logs": {"task_run_id": {"any_": run_ids}}}
        )
        return {
            match.group(1): datetime.fromisoformat(log["timestamp"]).timestamp()
            for log in logs
            if (match := regex.match(log["message"]))
        }

    return wait_for(read, lambda found: len(found) == len(run_ids), what="no log lines")


def held(prefect_server, run_ids) -> list[tuple[float, float]]:
    """When each check_stock run held its slot (from inside the block: within the hold)."""
    starts = logged(prefect_server, run_ids, r"^checking stock of (sku-\d+)$")
    ends = logged(prefect_server, run_ids, r"^checked stock of (sku-\d+)$")
    return [(starts[sku], ends[sku]) for sku in starts]


def start_queued_first(spawn, task_server, folder):
    """Queue the first batch before the task server starts, so the runs compete for the
    limits at once instead of trickling in at the submitter's pace."""
    submit = spawn(folder / "submit.py")
    submit.wait_for_line(r"^submitted 6 runs of check_stock$", timeout=120)
    server = task_server(folder / "task_server.py")
    return submit, server


def test_limits_hold_the_runs_back(prefect_server, spawn, task_server):
    submit, server = start_queued_first(spawn, task_server, STEP)
    assert submit.wait(timeout=180) == 0, submit.output

    # The task server created both limits (or found them from an earlier run).
    limits = {
        name: prefect_server.api("GET", f"/v2/concurrency_limits/{name}")
        for name in ("inventory-service", "sms-provider")
    }
    assert limits["inventory-service"]["limit"] == 3
    assert limits["inventory-service"]["slot_decay_per_second"] == 0
    assert limits["sms-provider"]["limit"] == 2
    assert limits["sms-provider"]["slot_decay_per_second"] == 1.0
    assert limits["inventory-service"]["active_slots"] == 0  # every slot was given back

    results = [f"sku-{n}: 12 in stock" for n in range(6)]
    results += [f"text sent to +15550100{n:02d}" for n in range(5)]
    assert [line for line in submit.output.splitlines() if line in results] == results

    stock = held(prefect_server, received(server, "check_stock", 6))
    assert most_at_once(stock) == 3  # never more than the limit, and the limit was reached

    sms = logged(prefect_server, received(server, "send_sms", 5), r"^sending a text to (\S+)$")
    assert rate_limit_violations(sms.values(), limit=2, per_second=1.0) == []


def test_the_checks_fail_without_the_limits():
    """The same checks on made-up timings: all at once breaks both."""
    at_once = [(0.0, 2.0)] * 9
    assert most_at_once(at_once) == 9
    assert rate_limit_violations([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 2, 1.0)
    assert not rate_limit_violations([0.0, 0.0, 1.0, 2.0, 3.0, 4.0], 2, 1.0)


def set_limit(prefect_server, name, limit):
    """Create the global concurrency limit `name`, or change it, behind the step's back."""
    path = "/v2/concurrency_limits/"
    response = prefect_server.request("PATCH", f"{path}{name}", json={"limit": limit})
    if response.status_code == 404:
        response = prefect_server.request("POST", path, json={"name": name, "limit": limit})
    response.raise_for_status()


def test_a_missing_limit_is_skipped_unless_strict(prefect_server, spawn, task_server, tmp_path):
    """concurrency() on a limit that does not exist runs unlimited with a warning;
    with strict=True (as rate_limit here) the run fails instead."""
    # The limit exists already, with another value: the task server puts it back to 3.
    set_limit(prefect_server, "inventory-service", 5)

    for name in ("tasks.py", "task_server.py", "submit.py"):
        shutil.copy(STEP / name, tmp_path / name)
    tasks = (tmp_path / "tasks.py").read_text()
    for old, new in [
        ("concurrency(INVENTORY_LIMIT, strict=True)", 'concurrency("no-such-limit")'),
        ("rate_limit(SMS_RATE_LIMIT, strict=True)", 'rate_limit("no-such-rate", strict=True)'),
    ]:
        assert tasks.count(old) == 1
        tasks = tasks.replace(old, new)
    (tmp_path / "tasks.py").write_text(tasks)

    submit, server = start_queued_first(spawn, task_server, tmp_path)
    limits = prefect_server.api("POST", "/v2/concurrency_limits/filter", json={})
    inventory = [limit for limit in limits if limit["name"] == "inventory-service"]
    assert [limit["limit"] for limit in inventory] == [3]

    assert submit.wait(timeout=180) == 1, submit.output

    stock = held(prefect_server, received(server, "check_stock", 6))
    assert most_at_once(stock) > 3
    server.wait_for_line(
        r"Concurrency limits \['no-such-limit'\] do not exist - skipping acquisition", timeout=10
    )

    for run_id in received(server, "send_sms", 5):
        # A run can read for a moment with no state while the server records a new one.
        run = wait_for(
            lambda run_id=run_id: prefect_server.task_run(run_id),
            lambda run: (
                run["state"] and run["state"]["type"] not in ("SCHEDULED", "PENDING", "RUNNING")
            ),
        )
        assert run["state"]["type"] == "FAILED"
        assert "must be created before acquiring slots" in run["state"]["message"]
    assert "ConcurrencySlotAcquisitionError" in submit.output


# Starts a script as `python script.py` would, but only once the file `go` exists, with
# Prefect already imported: two of these start the script within milliseconds of each other.
AT_THE_SIGNAL = """
import runpy, sys, time
from pathlib import Path

import prefect.task_worker  # the slow part of a start, before the signal

go, script = Path(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
sys.argv = [script]
sys.path.insert(0, str(Path(script).parent))
runpy.run_path(script, run_name="__main__")
"""
LIMIT_NAMES = ("inventory-service", "sms-provider")


def test_two_task_servers_starting_together_both_create_the_limits(
    prefect_server, started, tmp_path
):
    """Both task servers find no limit and create it at the same moment: the second create
    answers 409, and the task server must still start."""
    for round_ in range(ROUNDS):
        for name in LIMIT_NAMES:
            prefect_server.request("DELETE", f"/v2/concurrency_limits/{name}")
        go = tmp_path / f"go-{round_}"
        argv = [sys.executable, "-c", AT_THE_SIGNAL, str(go), str(STEP / "task_server.py")]
        servers = [
            Process(f"task_server-{i}", argv, env=prefect_server.env, echo=False) for i in range(2)
        ]
        started.extend(servers)
        for server in servers:
            server.wait_for_line(r"^ready$", timeout=120)
        go.touch()
        for server in servers:
            wait_until_subscribed(prefect_server.api_url, server)
        for server in servers:
            server.stop()
        limits = prefect_server.api("POST", "/v2/concurrency_limits/filter", json={})
        values = {
            limit["name"]: (limit["limit"], limit["slot_decay_per_second"])
            for limit in limits
            if limit["name"] in LIMIT_NAMES
        }
        assert values == {"inventory-service": (3, 0), "sms-provider": (2, 1.0)}
