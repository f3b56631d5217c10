"""Submit jobs to Prefect task servers, wait for every result, print the timings.

python -m benchmarks.submit_prefect naive|recommended TIMEOUT noop:COUNT pause:COUNT
"""

import asyncio
import sys
import time

from prefect import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

from benchmarks.measure import Recorder
from benchmarks.prefect_jobs import JOBS


def result(future, deadline: float) -> float:
    while True:
        try:
            # result() waits for the run's final event, and an event it misses costs the whole
            # timeout; after a timeout it reads the state once more. Short waits, repeated,
            # bound what a missed event costs.
            return future.result(timeout=min(max(deadline - time.monotonic(), 0.1), 5))
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
        except RuntimeError as exc:
            # Just after .delay() a run can exist for a moment without a state (seen on
            # SQLite), and result() then raises "has no state" at once: ask again.
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def collect(futures: list, recorder: Recorder, deadline: float) -> None:
    for index, future in enumerate(futures):
        try:
            recorder.result(index, result(future, deadline))
        except Exception as exc:
            recorder.error(f"{future.task_run_id}: {exc!r}")


def naive(task, count: int, recorder: Recorder) -> list:
    """A plain loop of .delay(): one API client, one parameters file and one POST per call."""
    futures = []
    recorder.begin()
    for index in range(count):
        started = time.perf_counter()
        futures.append(task.delay(index))
        recorder.submitted(time.perf_counter() - started)
    return futures


async def recommended(task, count: int, recorder: Recorder, deadline: float) -> None:
    """One API client for every submission (`create_run` is what .delay() calls, minus the
    new client per call), then the runs' states read in bulk instead of one waiter per run."""
    async with get_client() as client:
        run_ids = []
        recorder.begin()
        for index in range(count):
            started = time.perf_counter()
            run = await task.create_run(client=client, parameters={"index": index}, deferred=True)
            recorder.submitted(time.perf_counter() - started)
            run_ids.append(run.id)
        await collect_in_bulk(client, run_ids, recorder, deadline)


async def collect_in_bulk(client, run_ids: list, recorder: Recorder, deadline: float) -> None:
    """Poll the runs' states, 200 ids per request, until each is final or time is up."""
    pending = dict(zip(run_ids, range(len(run_ids)), strict=True))
    while pending and time.monotonic() < deadline:
        ids = list(pending)
        for first in range(0, len(ids), 200):
            runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids[first : first + 200])),
                limit=200,
            )
            for run in runs:
                if run.state is None or not run.state.is_final():
                    continue
                index = pending.pop(run.id)
                if run.state.is_completed():
                    recorder.result(index, await run.state.aresult())
                else:
                    recorder.error(f"{run.id}: {run.state.name}: {run.state.message}")
        if pending:
            await asyncio.sleep(0.2)
    for run_id in list(pending)[:5]:
        recorder.error(f"{run_id}: not final within the deadline")


if __name__ == "__main__":
    style, timeout = sys.argv[1], float(sys.argv[2])
    for phase in sys.argv[3:]:
        job, count = phase.split(":")
        recorder = Recorder(job, int(count))
        deadline = time.monotonic() + timeout
        try:
            if style == "naive":
                collect(naive(JOBS[job], int(count), recorder), recorder, deadline)
            else:
                asyncio.run(recommended(JOBS[job], int(count), recorder, deadline))
        except Exception as exc:
            recorder.error(f"submitting: {exc!r}")
        recorder.end()
        recorder.emit()
