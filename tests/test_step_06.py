"""Step 06: async tasks run concurrently on one task server's event loop."""

import re
import shutil
import time

from harness import UUID, most_at_once, step_dir

STEP = step_dir(6)
SUMMARY = (
    r"^(\d+) runs in (\d+) process\(es\), on (\d+) thread\(s\); at most (\d+) ran at the same time$"
)


def run_queued_first(prefect_server, spawn, task_server, folder, runs):
    """Queue every run before the task server starts, so all are ready to run at once.

    With the task server already up, each run's state updates compete with the next
    submissions for SQLite's write lock and the submitter stalls now and then; queueing
    first takes submission speed out of what the test measures."""
    submit = spawn(folder / "submit.py")
    submit.wait_for_line(rf"^submitted {runs} runs of fetch_report$", timeout=120)
    server = task_server(folder / "task_server.py")
    code = submit.wait(timeout=120)
    # Results are read once the task server is done with every run (see the trap test).
    deadline = time.monotonic() + 60
    while server.output.count("Finished in state Completed") < runs:
        assert time.monotonic() < deadline, server.output
        time.sleep(0.2)
    run_ids = re.findall(rf"Received task run: ({UUID}) - fetch_report", server.output)
    assert len(run_ids) == runs, server.output
    results = [prefect_server.result(run_id) for run_id in run_ids]
    summary = re.search(SUMMARY, submit.output, re.M)
    return code, submit, server, results, summary and [int(n) for n in summary.groups()]


def variant(tmp_path, runs, *replacements):
    """A copy of the step with some lines of tasks.py changed and fewer runs."""
    for name in ("tasks.py", "task_server.py", "submit.py"):
        shutil.copy(STEP / name, tmp_path / name)
    submit = (tmp_path / "submit.py").read_text()
    (tmp_path / "submit.py").write_text(submit.replace("RUNS = 10\n", f"RUNS = {runs}\n", 1))
    tasks = (tmp_path / "tasks.py").read_text()
    for old, new in replacements:
        assert tasks.count(old) == 1
        tasks = tasks.replace(old, new)
    (tmp_path / "tasks.py").write_text(tasks)
    return tmp_path


def test_async_runs_overlap_in_one_task_server(prefect_server, spawn, task_server):
    code, submit, server, results, summary = run_queued_first(
        prefect_server, spawn, task_server, STEP, runs=10
    )

    assert code == 0, submit.output
    assert summary == [10, 1, 1, 10]
    assert sorted(r["report"] for r in results) == list(range(10))
    # Every body ran inside the one task server process, on one thread: its event loop.
    assert {r["pid"] for r in results} == {server.pid}
    assert len({r["thread"] for r in results}) == 1
    # All ten were in flight at once: the last to start began before the first to end.
    assert max(r["started"] for r in results) < min(r["ended"] for r in results)


def test_blocking_code_in_an_async_task_blocks_the_loop(
    prefect_server, spawn, task_server, tmp_path
):
    """time.sleep in an async def task holds the event loop: the runs go one at a time."""
    folder = variant(tmp_path, 3, ("await asyncio.sleep(5)", "time.sleep(1)"))

    code, submit, server, results, summary = run_queued_first(
        prefect_server, spawn, task_server, folder, runs=3
    )

    assert code == 1, submit.output
    # The submitter may not get as far as its summary: with the loop blocked, a run can
    # be Completed before its result file is written, and reading it then fails.
    assert summary in ([3, 1, 1, 1], None), submit.output
    assert {r["pid"] for r in results} == {server.pid}
    assert most_at_once([(r["started"], r["ended"]) for r in results]) == 1
