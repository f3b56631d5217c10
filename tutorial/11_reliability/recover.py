"""Put stranded background task runs back in the queue; run it beside your task servers.

Prefect 3.9 delivers a background run once and never again. A run is stranded when:
- it is Scheduled, but the Prefect server lost its in-memory queue (it restarted);
- it is Pending or Running, but the task server that took it died;
- no task server serves its task key (the submitter runs another version of the code).
This re-enqueues the first two kinds and reports the third, which a new delivery would not
help. A run it re-enqueues may have done some or all of its work: tasks must be idempotent.
"""

import argparse
import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.client.schemas.sorting import TaskRunSort
from prefect.states import Scheduled

logger = logging.getLogger("recover")
PAGE = 200  # the most runs the API returns at once


def options() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scheduled-after",
        type=float,
        default=float(env("RECOVER_SCHEDULED_AFTER", "120")),
        help="re-enqueue runs Scheduled for longer than this many seconds; keep it above"
        " the longest a run waits in the queue (default: 120)",
    )
    parser.add_argument(
        "--running-after",
        type=float,
        default=float(env("RECOVER_RUNNING_AFTER", "600")),
        help="re-enqueue runs Pending or Running for longer than this many seconds; keep"
        " it above the longest a run takes (default: 600)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=float(env("RECOVER_INTERVAL", "10")),
        help="seconds between two passes (default: 10)",
    )
    parser.add_argument("--once", action="store_true", help="make one pass, then exit")
    return parser.parse_args()


async def unfinished_background_runs(client: PrefectClient) -> list[TaskRun]:
    runs: list[TaskRun] = []
    while True:
        page = await client.read_task_runs(
            task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(is_null_=True),  # background runs only
                state=TaskRunFilterState(
                    type=TaskRunFilterStateType(
                        any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
                    )
                ),
            ),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=PAGE,
            offset=len(runs),
        )
        runs += page
        if len(page) < PAGE:
            return runs


async def served_task_keys(client: PrefectClient) -> set[str]:
    """The task keys of the task servers subscribed right now."""
    response = await client.request("POST", "/task_workers/filter", json={})
    response.raise_for_status()
    return {key for worker in response.json() for key in worker["task_keys"]}


def is_stranded(run: TaskRun, now: datetime, opts: argparse.Namespace) -> bool:
    state = run.state
    if state.type == StateType.SCHEDULED:
        # A retry waits in a Scheduled state until its scheduled time.
        since = max(state.timestamp, state.state_details.scheduled_time or state.timestamp)
        return now - since > timedelta(seconds=opts.scheduled_after)
    return now - state.timestamp > timedelta(seconds=opts.running_after)


async def requeue(client: PrefectClient, run: TaskRun) -> bool:
    # Act only if the run is still in the state this pass judged stranded.
    current = await client.read_task_run(run.id)
    if current.state is None or current.state.id != run.state.id:
        logger.info(f"{run.id}: moved on to {current.state.name}, left alone")
        return False
    # A task server reads the run's arguments from result storage, under the id its
    # first Scheduled state carries; the new Scheduled state must carry it too.
    states = await client.read_task_run_states(run.id)
    parameters_id = next(
        (
            s.state_details.task_parameters_id
            for s in reversed(states)
            if s.state_details.task_parameters_id
        ),
        None,
    )
    scheduled = Scheduled(name="Requeued")
    scheduled.state_details.deferred = True  # a background run: the server queues it
    scheduled.state_details.task_parameters_id = parameters_id
    result = await client.set_task_run_state(run.id, scheduled, force=True)
    if result.state is None or result.state.type != StateType.SCHEDULED:
        logger.warning(f"{run.id}: the server refused: {result.details}")
        return False
    logger.info(f"{run.id}: re-enqueued ({run.state.name} since {run.state.timestamp:%H:%M:%S})")
    return True


async def reconcile(client: PrefectClient, opts: argparse.Namespace) -> int:
    """One pass; returns how many runs it re-enqueued."""
    runs = [run for run in await unfinished_background_runs(client) if run.state]
    served = await served_task_keys(client)
    now = datetime.now(UTC)
    stranded = [run for run in runs if is_stranded(run, now, opts)]
    for key in sorted({run.task_key for run in stranded} - served):
        count = sum(run.task_key == key for run in stranded)
        logger.warning(
            f"no task server serves {key} right now: {count} stranded runs left as they are"
        )
    requeued = 0
    for run in stranded:
        if run.task_key in served:
            requeued += await requeue(client, run)
    logger.info(f"pass: {len(runs)} unfinished, {len(stranded)} stranded, {requeued} re-enqueued")
    return requeued


async def main() -> None:
    opts = options()
    logging.basicConfig(format="%(asctime)s | %(levelname)-7s | recover - %(message)s")
    logger.setLevel(logging.INFO)
    async with get_client() as client:
        while True:
            try:
                await reconcile(client, opts)
            except Exception as exc:  # the Prefect server restarting, for example
                if opts.once:
                    raise
                logger.error(f"pass failed, trying again: {exc!r}")
            if opts.once:
                return
            await asyncio.sleep(opts.interval)


if __name__ == "__main__":
    asyncio.run(main())
