"""Step 02: futures, results (a pydantic model among them) and the storage both sides share."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from harness import UUID, step_dir, step_tasks, wait_for

STEP = step_dir(2)
T = TypeVar("T")
INVOICE = "Invoice(order_id=42, total_cents=2499, currency='EUR')"


def latest_run(prefect_server, name: str) -> dict:
    body = {"task_runs": {"name": {"any_": [name]}}, "sort": "EXPECTED_START_TIME_DESC"}
    return prefect_server.api("POST", "/task_runs/filter", json={**body, "limit": 1})[0]


def scheduled_state(prefect_server, run_id: str) -> dict:
    states = prefect_server.api("GET", "/task_run_states/", params={"task_run_id": run_id})
    return next(s for s in states if s["name"] == "Scheduled")


def test_results_models_and_failures(prefect_server, task_server):
    task_server(STEP / "task_server.py")

    submit = prefect_server.run_script(STEP / "submit.py", timeout=240)

    assert submit.code == 0, submit.output
    lines = submit.output.splitlines()
    # Read at once: Scheduled until the task server has it, or already further along.
    assert re.search(
        r"^build_invoice is (Scheduled|Pending|Running|Completed)$", submit.output, re.M
    )
    assert f"build_invoice returned {INVOICE}" in lines
    assert "charge_card raised ValueError('card 0000-1111 declined for order 7')" in lines
    assert (
        "charge_card is Failed, its result: ValueError('card 0000-1111 declined for order 7')"
        in lines
    )

    failed = latest_run(prefect_server, "charge_card")
    assert failed["state"]["type"] == "FAILED"
    assert prefect_server.state_names(failed["id"])[-1] == "Failed"

    # The result is a file in the shared storage, referenced by absolute path, and loads back
    # as the model class itself (the reader must be able to import tasks.Invoice).
    invoice_run = latest_run(prefect_server, "build_invoice")
    storage = prefect_server.home / "storage"
    storage_key = Path(invoice_run["state"]["data"]["storage_key"])
    assert storage_key.is_absolute() and storage_key.parent == storage
    assert storage_key.is_file()
    with step_tasks(STEP) as tasks:
        invoice = prefect_server.result(invoice_run["id"])
        assert isinstance(invoice, tasks.Invoice)
        assert invoice == tasks.Invoice(order_id=42, total_cents=2499)

    # The parameters went to storage/parameters/<id named in the Scheduled state>.
    parameters_id = scheduled_state(prefect_server, invoice_run["id"])["state_details"][
        "task_parameters_id"
    ]
    assert (storage / "parameters" / parameters_id).is_file()


def past_the_no_state_moment(call: Callable[[], T]) -> T:
    """Prefect's own call, made again while it fails with "has no state": on SQLite a run can
    read for a moment with no state (tests/test_waiting.py pins that)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return call()
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_prefects_wait_returns_at_its_timeout_and_result_raises(prefect_server, task_server):
    """The lesson's account of Prefect's own calls, with no task server: wait(timeout) returns
    when the time is up and raises nothing, the run still Scheduled; result(timeout) raises
    TimeoutError. A task server that starts later still runs it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from tutorial.waiting import result_of

    settings = {PREFECT_API_URL: prefect_server.api_url, PREFECT_HOME: prefect_server.home}
    with temporary_settings(settings), step_tasks(STEP) as tasks:
        future = tasks.charge_card.delay(9, "4242-4242")
        assert past_the_no_state_moment(lambda: future.wait(timeout=1)) is None
        # future.state reads a run with no state as Pending: read past that moment too.
        state = wait_for(lambda: future.state, lambda s: s.name != "Pending", timeout=30)
        assert state.name == "Scheduled"
        assert not state.is_final()
        with pytest.raises(TimeoutError, match=r"did not complete within 1 seconds"):
            past_the_no_state_moment(lambda: future.result(timeout=1))

        task_server(STEP / "task_server.py")
        assert result_of(future, timeout=120) == "order 9 charged"


def test_a_submitter_with_other_storage_loses_its_run(prefect_server, task_server):
    server = task_server(STEP / "task_server.py")

    submit = prefect_server.run_script(STEP / "submit_elsewhere.py", timeout=240)

    assert submit.code == 0, submit.output
    run_id = re.search(rf"^submitted task run ({UUID})$", submit.output, re.M).group(1)
    assert re.search(
        r"^  its parameters went to \S*another-machine-\S*/parameters/$", submit.output, re.M
    )
    error = re.search(r"^result_of raised (\w+): the run never ran$", submit.output, re.M)
    assert error, submit.output

    # The task server looked in its own storage, found nothing, and deleted the run.
    server.wait_for_line(rf"Failed to read parameters for task run UUID\('{run_id}'\)", 10)
    server.wait_for_line(rf"Deleting task run UUID\('{run_id}'\) because it failed", 10)
    assert "Submitting task run 'charge_card' to engine" not in server.output.split(run_id, 1)[1]

    # Either the submitter saw the deletion (ObjectNotFound), or the submitter's own
    # "Scheduled" event re-created the run record after it: then it sits Scheduled forever
    # and result_of times out. It never completes. future.state reads Scheduled while the
    # record is back, Pending while it is gone.
    shown = re.search(r"^  future.state now reads (\w+)$", submit.output, re.M).group(1)
    assert shown in {"Scheduled", "Pending"}
    response = prefect_server.request("GET", f"/task_runs/{run_id}")
    if error.group(1) == "TimeoutError":
        assert shown == "Scheduled"
        assert response.json()["state"]["name"] == "Scheduled"
    else:
        assert error.group(1) == "ObjectNotFound"
        if response.status_code == 404:
            assert shown == "Pending"
        else:
            assert response.json()["state"]["name"] == "Scheduled"


def test_a_shared_local_storage_path_works(prefect_server, task_server, tmp_path):
    """Both sides pointed at the same folder (a shared disk, on two machines) work together."""
    shared = tmp_path / "shared"
    task_server(STEP / "task_server.py", PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(shared))

    submit = prefect_server.run_script(
        STEP / "submit.py", timeout=240, PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(shared)
    )

    assert submit.code == 0, submit.output
    assert f"build_invoice returned {INVOICE}" in submit.output.splitlines()
    invoice_run = latest_run(prefect_server, "build_invoice")
    assert Path(invoice_run["state"]["data"]["storage_key"]).parent == shared
    parameters_id = scheduled_state(prefect_server, invoice_run["id"])["state_details"][
        "task_parameters_id"
    ]
    assert (shared / "parameters" / parameters_id).is_file()
    assert not (prefect_server.home / "storage" / "parameters" / parameters_id).exists()
