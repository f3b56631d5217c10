import statistics
import sys
import time
import uuid
from collections import Counter

from prefect import get_client, tags
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.objects import StateType
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tasks import import_file

FILE_IDS = range(1, 21)  # ids ending in 9 always fail; ids ending in 4 fail once, then work
DEADLINE = 120  # seconds to wait for every run to reach a final state
# Read state_type, not state: on SQLite a run has no state for a moment while the server
# records a new one (step 08), but its state_type already names the new one.
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def view(runs, file_of) -> Table:
    """One row per run, as the Prefect API reports it right now."""
    counts = Counter(run.state_name for run in runs)
    table = Table(
        title="import_file runs", caption=", ".join(f"{n} {s}" for s, n in counts.items())
    )
    for column in ("file", "task run", "state", "attempts"):
        table.add_column(column)
    for run in sorted(runs, key=lambda r: file_of[r.id]):
        table.add_row(str(file_of[run.id]), str(run.id), run.state_name, str(run.run_count))
    return table


def queue_wait(states) -> float:
    """Seconds from Scheduled to the first Running: the time the run waited for a slot."""
    scheduled = next(s.timestamp for s in states if s.name == "Scheduled")
    running = min(s.timestamp for s in states if s.name == "Running")
    return (running - scheduled).total_seconds()


if __name__ == "__main__":
    # A tag names this batch: filter by it in the UI, the API and the event stream.
    batch = f"batch-{uuid.uuid4().hex[:8]}"
    with tags(batch):
        file_of = {import_file.delay(n).task_run_id: n for n in FILE_IDS}
    print(f"submitted {len(file_of)} runs of import_file, tagged {batch}")

    console = Console()
    run_filter = TaskRunFilter(id=TaskRunFilterId(any_=list(file_of)))
    deadline = time.monotonic() + DEADLINE
    with get_client(sync_client=True) as client:
        # In a terminal the table redraws in place; in a log (not a terminal) Live prints
        # nothing, and only the summary below is written.
        with Live(console=console, transient=not console.is_terminal) as live:
            while time.monotonic() < deadline:
                runs = client.read_task_runs(task_run_filter=run_filter, limit=len(file_of))
                live.update(view(runs, file_of))
                if len(runs) == len(file_of) and all(r.state_type in FINAL for r in runs):
                    break
                time.sleep(0.5)
        histories = {run.id: client.read_task_run_states(run.id) for run in runs}

    unfinished = [r for r in runs if r.state_type not in FINAL]
    completed = [r for r in runs if r.state_type == StateType.COMPLETED]
    failed = [r for r in runs if r.state_type == StateType.FAILED]
    retried = [r for r in runs if any(s.name == "Retrying" for s in histories[r.id])]
    waits = [queue_wait(h) for h in histories.values() if any(s.name == "Running" for s in h)]
    print(
        f"summary: {len(runs)} runs: {len(completed)} completed, {len(failed)} failed,"
        f" {len(retried)} retried, {len(unfinished)} unfinished"
    )
    if waits:
        print(
            f"queue wait (Scheduled to first Running): p50 {statistics.median(waits):.2f} s,"
            f" max {max(waits):.2f} s"
        )

    # Exit non-zero unless the batch ended as its file ids say it must.
    expected_failed = sum(1 for n in FILE_IDS if n % 10 == 9)
    expected_retried = sum(1 for n in FILE_IDS if n % 10 in (4, 9))
    ok = (
        not unfinished
        and len(failed) == expected_failed
        and len(retried) == expected_retried
        and len(completed) == len(FILE_IDS) - expected_failed
    )
    sys.exit(0 if ok else 1)
