"""Step 04: retries with backoff, a retry condition, a timeout, and how a submitter sees
each outcome, read back from the Prefect API."""

import re
from datetime import datetime

import pytest
from harness import UUID, load_module, step_dir, wait_for

STEP = step_dir(4)
# retry_jitter_factor=0.5 draws each delay between these multiples of the configured one.
JITTER_LOW = 0.629


@pytest.fixture(scope="module")
def served(prefect_server):
    """One task server for the module: the tests tell their runs apart by id."""
    with prefect_server.serving(STEP / "task_server.py") as process:
        yield process


def outcome(output: str, call: str) -> dict[str, str]:
    """One call's line of submit.py's output."""
    match = re.search(
        rf"^{re.escape(call)}: (?P<name>\w+) \(type (?P<type>\w+)\) -> (?P<result>.*)$",
        output,
        re.M,
    )
    assert match, f"no outcome for {call} in:\n{output}"
    return match.groupdict()


def timestamps(prefect_server, run_id: str) -> dict[str, datetime]:
    states = prefect_server.api("GET", "/task_run_states/", params={"task_run_id": run_id})
    return {s["name"]: datetime.fromisoformat(s["timestamp"]) for s in states}


def test_retries_permanent_errors_and_timeouts(prefect_server, served):
    seen = len(served.lines)

    submit = prefect_server.run_script(STEP / "submit.py")

    assert submit.code == 0, submit.output
    # The runs this submitter made, as the task server received them.
    received = re.compile(rf"Received task run: ({UUID}) - (\w+)$")

    def runs_received() -> dict[str, list[str]]:
        runs: dict[str, list[str]] = {"send_receipt": [], "render_invoice": []}
        for line in served.lines[seen:]:
            if match := received.search(line):
                runs[match.group(2)].append(match.group(1))
        return runs

    runs = wait_for(runs_received, lambda runs: [len(ids) for ids in runs.values()] == [2, 1])
    finals = {i: prefect_server.task_run(i)["state"]["name"] for i in runs["send_receipt"]}
    ada = next(i for i, name in finals.items() if name == "Completed")
    bob = next(i for i, name in finals.items() if name == "Failed")
    (invoice,) = runs["render_invoice"]

    # A transient error, retried in place on the task server until the third attempt works.
    assert outcome(submit.output, "send_receipt('ada@example.com')") == {
        "name": "Completed",
        "type": "COMPLETED",
        "result": "'receipt sent to ada@example.com on attempt 3'",
    }
    assert prefect_server.task_run(ada)["run_count"] == 3
    assert prefect_server.state_names(ada) == [
        "Scheduled",
        "Pending",
        "Running",
        "AwaitingRetry",
        "Retrying",
        "AwaitingRetry",
        "Retrying",
        "Completed",
    ]
    assert prefect_server.result(ada) == "receipt sent to ada@example.com on attempt 3"
    for attempt in (1, 2, 3):
        served.wait_for_line(rf"attempt {attempt}: sending a receipt to ada@example\.com", 10)
    served.wait_for_line(r"Retry 2/3 will start [\d.]+ second\(s\) from now", 10)
    # Each retry's delay, as the task server logged it, lies within the jitter's range.
    base = load_tasks().send_receipt.retry_delay_seconds
    logged = "\n".join(served.lines[seen:])
    delays = re.findall(r"Retry (\d)/3 will start ([\d.]+) second", logged)
    assert [int(n) for n, _ in delays] == [1, 2]
    for n, delay in delays:
        assert JITTER_LOW * base[int(n) - 1] <= float(delay) <= 1.5 * base[int(n) - 1], delays

    # A permanent error: retry_condition_fn says no, so one attempt and Failed.
    assert outcome(submit.output, "send_receipt('bob@nowhere.invalid')") == {
        "name": "Failed",
        "type": "FAILED",
        "result": "AddressRejected('550 no such mailbox: bob@nowhere.invalid')",
    }
    run = prefect_server.task_run(bob)
    assert run["run_count"] == 1
    assert run["state"]["message"] == (
        "Task run encountered an exception AddressRejected:"
        " 550 no such mailbox: bob@nowhere.invalid"
    )
    assert prefect_server.state_names(bob) == ["Scheduled", "Pending", "Running", "Failed"]
    assert "attempt 2: sending a receipt to bob@nowhere.invalid" not in logged

    # A timeout: a FAILED state named TimedOut; the body was interrupted at 2 s, not left
    # to finish its 10 s sleep.
    assert outcome(submit.output, "render_invoice(42)") == {
        "name": "TimedOut",
        "type": "FAILED",
        "result": "FailedRun('Task run exceeded timeout of 2.0 second(s)')",
    }
    run = prefect_server.task_run(invoice)
    assert (run["state"]["type"], run["state"]["name"]) == ("FAILED", "TimedOut")
    assert run["state"]["message"] == "Task run exceeded timeout of 2.0 second(s)"
    assert prefect_server.state_names(invoice) == ["Scheduled", "Pending", "Running", "TimedOut"]
    ran = timestamps(prefect_server, invoice)
    assert (ran["TimedOut"] - ran["Running"]).total_seconds() < 10


def load_tasks():
    return load_module(STEP / "tasks.py", "step_04_tasks")


def test_result_does_not_hear_a_timed_out_run(prefect_server, served):
    """Pins the TimedOut half of SURPRISES.md#result-misses-cached-and-timedout:
    result(timeout=N) on a run that ends TimedOut waits all N seconds, although the run was
    final long before. If Prefect starts hearing TimedOut runs, this test fails."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    tasks = load_tasks()
    settings = {PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}
    with temporary_settings(settings):
        future = tasks.render_invoice.delay(7)
        run_id = str(future.task_run_id)
        # A run reads with no state for a moment while the server writes a new one.
        wait_for(
            lambda: (prefect_server.task_run(run_id)["state"] or {}).get("name"),
            lambda name: name == "Running",
            what="the run never started",
        )
        result = future.result(timeout=6, raise_on_failure=False)
        returned = datetime.now().astimezone()

    assert repr(result) == "FailedRun('Task run exceeded timeout of 2.0 second(s)')"
    timed_out = timestamps(prefect_server, run_id)["TimedOut"]
    # The run ended about 2 s after it started; result() returned about 4 s after that.
    assert (returned - timed_out).total_seconds() > 2


def test_jitter_draws_each_delay_between_063_and_15_times_the_base():
    """What retry_jitter_factor=0.5 does to a delay, from the function Prefect's task engine
    calls: as many shorter delays as longer ones, none below 0.63x or above 1.5x."""
    from prefect.utilities.math import clamped_poisson_interval

    factor = load_tasks().send_receipt.retry_jitter_factor
    assert factor == 0.5
    draws = [clamped_poisson_interval(1.0, clamping_factor=factor) for _ in range(20_000)]

    assert JITTER_LOW <= min(draws) < 0.64
    assert 1.49 < max(draws) <= 1.5
    assert 0.97 < sum(draws) / len(draws) < 1.03  # the average stays the configured delay
    assert 0.45 < sum(d < 1 for d in draws) / len(draws) < 0.6  # about half are shorter
