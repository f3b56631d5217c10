"""Step 01: a task submitted with .delay() runs on the task server, not in the submitter."""

import re

from harness import UUID, load_module, step_dir

STEP = step_dir(1)


def test_delay_runs_on_the_task_server(prefect_server, task_server):
    server = task_server(STEP / "task_server.py")

    submit = prefect_server.run_script(STEP / "submit.py")

    assert submit.code == 0, submit.output
    assert re.search(
        r"^foreground: welcome email sent to ada@example\.com \(took \d", submit.output, re.M
    )
    run_id = re.search(rf"^background: submitted task run ({UUID})$", submit.output, re.M).group(1)
    ui_url = prefect_server.api_url.removesuffix("/api")
    assert f"watch it in the UI: {ui_url}/runs/task-run/{run_id}" in submit.output
    assert "background: welcome email sent to grace@example.com" in submit.output.splitlines()

    # The foreground call ran in the submitter; the background one on the task server.
    assert "Sent a welcome email to ada@example.com" in submit.output
    assert "Sent a welcome email to grace@example.com" not in submit.output
    server.wait_for_line(rf"Received task run: {run_id}", timeout=10)
    server.wait_for_line(r"Sent a welcome email to grace@example\.com", timeout=10)
    assert "ada@example.com" not in server.output

    run = prefect_server.task_run(run_id)
    assert run["state"]["type"] == "COMPLETED"
    assert run["flow_run_id"] is None  # a background run belongs to no flow
    assert run["task_key"].startswith("send_welcome_email-")
    assert prefect_server.state_names(run_id) == ["Scheduled", "Pending", "Running", "Completed"]
    assert prefect_server.result(run_id) == "welcome email sent to grace@example.com"


def test_a_run_waits_for_a_task_server(prefect_server, spawn, task_server):
    """With no task server, a run stays Scheduled; one that starts later picks it up."""
    submit = spawn(STEP / "submit.py")
    run_id = submit.wait_for_line(rf"^background: submitted task run ({UUID})$", timeout=60).group(
        1
    )
    assert prefect_server.task_run(run_id)["state"]["name"] == "Scheduled"

    task_server(STEP / "task_server.py")

    assert submit.wait(timeout=60) == 0, submit.output
    assert "background: welcome email sent to grace@example.com" in submit.output.splitlines()
    assert prefect_server.task_run(run_id)["state"]["type"] == "COMPLETED"


def _task_key(source: str, path) -> str:
    """The task key of send_welcome_email when its module's text is `source`, saved as `path`."""
    path.write_text(source)
    return load_module(path).send_welcome_email.task_key


def test_the_task_key_hashes_the_code_and_its_line_numbers(tmp_path):
    """Why submitter and task server must import the very same tasks.py."""
    source = (STEP / "tasks.py").read_text()
    key = _task_key(source, tmp_path / "tasks.py")

    assert key.startswith("send_welcome_email-")
    assert _task_key(source, tmp_path / "renamed_module.py") == key
    assert _task_key("\n" + source, tmp_path / "blank_line.py") != key
    changed = source.replace("time.sleep(2)", "time.sleep(3)")
    assert _task_key(changed, tmp_path / "changed_body.py") != key
