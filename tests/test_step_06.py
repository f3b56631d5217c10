"""Step 06: async tasks run concurrently on one task server's event loop; blocking code in
them runs one at a time. When each body started is read from its log line in the API."""

import re
import shutil
from datetime import datetime
from itertools import pairwise

from harness import UUID, step_dir, wait_for

STEP = step_dir(6)
FETCHING = re.compile(r"^fetching report (\d+)$")


def body_starts(prefect_server, run_ids: list[str]) -> dict[int, datetime]:
    """When each run's body printed `fetching report N`, from the run logs in the API."""

    def read() -> dict[int, datetime]:
        logs = prefect_server.api(
            "POST", "/logs/filter", json={"logs": {"task_run_id": {"any_": run_ids}}}
        )
        return {
            int(match.group(1)): datetime.fromisoformat(log["timestamp"])
            for log in logs
            if (match := FETCHING.match(log["message"]))
        }

    return wait_for(read, lambda starts: len(starts) == len(run_ids), what="no log lines")


def run_queued_first(prefect_server, spawn, task_server, folder, runs):
    """Queue every run before the task server starts, so all are ready to run at once.

    With the task server already up, each run's state updates compete with the next
    submissions for SQLite's write lock and the submitter stalls now and then; queueing
    first takes submission speed out of what the test measures."""
    submit = spawn(folder / "submit.py")
    submit.wait_for_line(rf"^submitted {runs} runs of fetch_report$", timeout=120)
    server = task_server(folder / "task_server.py")
    code = submit.wait(timeout=120)
    run_ids = wait_for(
        lambda: re.findall(rf"Received task run: ({UUID}) - fetch_report", server.output),
        lambda ids: len(ids) == runs,
    )
    # Every run ended Completed, in this one task server.
    wait_for(
        lambda: [(prefect_server.task_run(i)["state"] or {}).get("name") for i in run_ids],
        lambda names: names == ["Completed"] * runs,
    )
    return code, submit, body_starts(prefect_server, run_ids)


def variant(tmp_path, runs, *replacements):
    """A copy of the step with some lines of tasks.py changed and fewer runs."""
    for name in ("tasks.py", "task_server.py", "submit.py"):
        shutil.copy(STEP / name, tmp_path / name)
    submit = (tmp_path / "submit.py").read_text()
    assert submit.count("range(10)") == 1
    (tmp_path / "submit.py").write_text(submit.replace("range(10)", f"range({runs})"))
    tasks = (tmp_path / "tasks.py").read_text()
    for old, new in replacements:
        assert tasks.count(old) == 1
        tasks = tasks.replace(old, new)
    (tmp_path / "tasks.py").write_text(tasks)
    return tmp_path


def test_async_runs_overlap_in_one_task_server(prefect_server, spawn, task_server):
    code, submit, starts = run_queued_first(prefect_server, spawn, task_server, STEP, runs=10)

    assert code == 0, submit.output
    reports = ", ".join(f"report {n}" for n in range(10))
    assert f"got {reports}" in submit.output
    # Each body sleeps 5 s after it starts: the last started before the first could end,
    # so all ten were in flight at once.
    assert sorted(starts) == list(range(10))
    first, last = min(starts.values()), max(starts.values())
    assert (last - first).total_seconds() < 5, starts


def test_blocking_code_in_an_async_task_blocks_the_loop(
    prefect_server, spawn, task_server, tmp_path
):
    """time.sleep in an async def task holds the event loop: the runs go one at a time."""
    folder = variant(
        tmp_path,
        3,
        ("import asyncio\n", "import asyncio\nimport time\n"),
        ("await asyncio.sleep(5)", "time.sleep(1)"),
    )

    # The submitter may fail to read a result: with the loop blocked, a run can be Completed
    # before its result file is written. Its exit code says nothing here.
    _, _, starts = run_queued_first(prefect_server, spawn, task_server, folder, runs=3)

    # Each body holds the loop for 1 s after it starts, so the next starts 1 s later at least.
    times = sorted(starts.values())
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    assert min(gaps) >= 0.99, starts
