import statistics
import time
import uuid
from collections import Counter

from prefect import get_client, tags
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

from tasks import import_file

if __name__ == "__main__":
    batch = f"batch-{uuid.uuid4().hex[:8]}"  # a tag: find the batch in the UI, API and events
    with tags(batch):
        ids = [import_file.delay(file_id).task_run_id for file_id in range(1, 21)]
    print(f"submitted {len(ids)} runs of import_file, tagged {batch}")

    these = TaskRunFilter(id=TaskRunFilterId(any_=ids))
    deadline, shown = time.monotonic() + 120, ""
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=these, limit=len(ids))
            counts = Counter(run.state_name for run in runs)  # the API's view, right now
            now = ", ".join(f"{n} {state}" for state, n in counts.most_common())
            if now != shown:
                print(now)
                shown = now
            # No state for a moment on SQLite (../SURPRISES.md#no-state-moment): not final.
            if len(runs) == len(ids) and all(run.state and run.state.is_final() for run in runs):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch} did not finish within 120 s")
            time.sleep(0.5)

    retried = sum(run.run_count > 1 for run in runs)  # one run_count per attempt
    print(f"summary: {len(runs)} runs: {shown}, {retried} retried")
    # Queue wait: from .delay() to the first Running, the time a run waited for a free slot.
    waits = [(run.start_time - run.expected_start_time).total_seconds() for run in runs]
    print(f"queue wait: p50 {statistics.median(waits):.2f} s, max {max(waits):.2f} s")
