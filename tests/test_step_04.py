"""Step 04: retries with backoff, a retry condition, a timeout, and how a submitter sees
each outcome, read back from the Prefect API."""

import re
import time
from contextlib import contextmanager
from datetime import datetime

from harness import UUID, load_module, step_dir

STEP = step_dir(4)
# retry_jitter_factor=0.5 draws each delay between these multiples of the configured one.
JITTER_LOW = 0.629


def outcome(output: str, call: str) -> dict[str, str]:
    """One call's block of submit.py's output."""
    match = re.search(
        rf"^{re.escape(call)}: task run (?P<id>{UUID})\n"
        r"  state:   (?P<name>\w+) \(type (?P<type>\w+)\)\n"
        r"  message: (?P<message>.*)\n"
        r"  result:  (?P<result>.*)$",
        output,
        re.M,
    )
    assert match, f"no outcome for {call} in:\n{output}"
    return match.groupdict()


def timestamps(prefect_server, run_id: str) -> dict[str, datetime]:
    states = prefect_server.api("GET", "/task_run_states/", params={"task_run_id": run_id})
    return {s["name"]: datetime.fromisoformat(s["timestamp"]) for s in states}


def test_retries_permanent_errors_and_timeouts(prefect_server, task_server):
    server = task_server(STEP / "task_server.py")

    submit = prefect_server.run_script(STEP / "submit.py")

    assert submit.code == 0, submit.output

    # A transient error, retried in place on the task server until the third attempt works.
    receipt = outcome(submit.output, "send_receipt('ada@example.com')")
    assert receipt["name"] == "Completed"
    assert receipt["result"] == "'receipt sent to ada@example.com on attempt 3'"
    run = prefect_server.task_run(receipt["id"])
    assert run["run_count"] == 3
    assert prefect_server.state_names(receipt["id"]) == [
        "Scheduled",
        "Pending",
        "Running",
        "AwaitingRetry",
        "Retrying",
        "AwaitingRetry",
        "Retrying",
        "Completed",
    ]
    assert prefect_server.result(receipt["id"]) == "receipt sent to ada@example.com on attempt 3"
    for attempt in (1, 2, 3):
        server.wait_for_line(rf"attempt {attempt}: sending a receipt to ada@example\.com", 10)
    server.wait_for_line(r"Retry 2/3 will start [\d.]+ second\(s\) from now", 10)
    # Each retry's delay, as the task server logged it, lies within the jitter's range.
    base = load_tasks().send_receipt.retry_delay_seconds
    delays = re.findall(r"Retry (\d)/3 will start ([\d.]+) second", server.output)
    assert [int(n) for n, _ in delays] == [1, 2]
    for n, delay in delays:
        assert JITTER_LOW * base[int(n) - 1] <= float(delay) <= 1.5 * base[int(n) - 1], delays

    # A permanent error: retry_condition_fn says no, so one attempt and Failed.
    rejected = outcome(submit.output, "send_receipt('bob@nowhere.invalid')")
    message = (
        "Task run encountered an exception AddressRejected:"
        " 550 no such mailbox: bob@nowhere.invalid"
    )
    assert rejected == {
        "id": rejected["id"],
        "name": "Failed",
        "type": "FAILED",
        "message": message,
        "result": "AddressRejected('550 no such mailbox: bob@nowhere.invalid')",
    }
    run = prefect_server.task_run(rejected["id"])
    assert run["run_count"] == 1
    assert run["state"]["message"] == message
    assert prefect_server.state_names(rejected["id"]) == [
        "Scheduled",
        "Pending",
        "Running",
        "Failed",
    ]
    assert "attempt 2: sending a receipt to bob@nowhere.invalid" not in server.output

    # A timeout: a FAILED state named TimedOut; the body was interrupted at 2 s, not left
    # to finish its 10 s sleep.
    invoice = outcome(submit.output, "render_invoice(42)")
    assert invoice == {
        "id": invoice["id"],
        "name": "TimedOut",
        "type": "FAILED",
        "message": "Task run exceeded timeout of 2.0 second(s)",
        "result": "FailedRun('Task run exceeded timeout of 2.0 second(s)')",
    }
    run = prefect_server.task_run(invoice["id"])
    assert (run["state"]["type"], run["state"]["name"]) == ("FAILED", "TimedOut")
    assert prefect_server.state_names(invoice["id"]) == [
        "Scheduled",
        "Pending",
        "Running",
        "TimedOut",
    ]
    ran = timestamps(prefect_server, invoice["id"])
    assert (ran["TimedOut"] - ran["Running"]).total_seconds() < 10


def load_tasks():
    return load_module(STEP / "tasks.py", "step_04_tasks")


@contextmanager
def client_settings(prefect_server):
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(
        {PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}
    ):
        yield


def test_result_does_not_hear_a_timed_out_run(prefect_server, task_server):
    """Why submit.py polls the state: result(timeout=N) on a run that ends TimedOut waits
    all N seconds, although the run was final long before."""
    task_server(STEP / "task_server.py")
    tasks = load_tasks()
    with client_settings(prefect_server):
        future = tasks.render_invoice.delay(7)
        deadline = time.monotonic() + 60
        # A run reads with no state for a moment while the server writes a new one (step 02).
        while (prefect_server.task_run(str(future.task_run_id))["state"] or {}).get(
            "name"
        ) != "Running":
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)

        result = future.result(timeout=8, raise_on_failure=False)
        returned = datetime.now().astimezone()

    assert repr(result) == "FailedRun('Task run exceeded timeout of 2.0 second(s)')"
    timed_out = timestamps(prefect_server, str(future.task_run_id))["TimedOut"]
    # The run ended about 2 s after it started; result() returned about 6 s after that.
    assert (returned - timed_out).total_seconds() > 3


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
