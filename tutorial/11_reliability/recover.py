"""Put lost background task runs back in the queue; run it beside your task servers.

Prefect 3.9 delivers a background run once and never again. A run is lost when:
- it is Scheduled, but the Prefect server lost its in-memory queue (it restarted), or the
  task server that took it died before it reported the run Pending;
- it is Pending or Running, but the task server that took it died.
A run that is only waiting in the queue is not lost: queuing it again would deliver it
twice. This re-enqueues lost runs only. It reports runs whose task key no task server
serves, which a new delivery would not help. A run it re-enqueues may have done some or
all of its work: tasks must be idempotent.
"""

import argparse
import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import State, StateType, TaskRun
from prefect.states import Scheduled

logger = logging.getLogger("recover")
PAGE = 200  # the most runs the API returns at once
HEARTBEAT = "task-server.heartbeat"  # the event task_server.py sends for each run it runs
# A Scheduled run's timestamp is the server's clock, a submitter's expected start time its
# own: the reasoning below holds while the clocks agree within this margin.
CLOCKS = timedelta(seconds=1)


def options() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scheduled-after",
        type=float,
        default=float(env("RECOVER_SCHEDULED_AFTER", "120")),
        help="never touch a run Scheduled for less than this many seconds (default: 120)",
    )
    parser.add_argument(
        "--running-after",
        type=float,
        default=float(env("RECOVER_RUNNING_AFTER", "600")),
        help="re-enqueue runs Pending or Running with no news for this many seconds: no new"
        " state, no heartbeat; keep it above the longest a run takes, unless every task"
        " server sends heartbeats (default: 600)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=float(env("RECOVER_INTERVAL", "10")),
        help="seconds between two passes (default: 10)",
    )
    parser.add_argument("--once", action="store_true", help="make one pass, then exit")
    return parser.parse_args()


async def task_runs(client: PrefectClient, **filters) -> list[TaskRun]:
    runs: list[TaskRun] = []
    while True:
        body = {"task_runs": filters, "sort": "EXPECTED_START_TIME_DESC", "limit": PAGE}
        response = await client.request(
            "POST", "/task_runs/filter", json=body | {"offset": len(runs)}
        )
        response.raise_for_status()
        page = [TaskRun.model_validate(run) for run in response.json()]
        runs += page
        if len(page) < PAGE:
            return runs


async def task_servers(client: PrefectClient) -> dict[str, set[str]]:
    """The task keys of each task server subscribed right now, by its id."""
    response = await client.request("POST", "/task_workers/filter", json={})
    response.raise_for_status()
    return {worker["identifier"]: set(worker["task_keys"]) for worker in response.json()}


def queued(run: TaskRun) -> bool:
    """In the queue, or lost from it: .delay() and this script mark the state deferred."""
    return run.state.type == StateType.SCHEDULED and bool(run.state.state_details.deferred)


def background(states: list[State]) -> bool:
    """Submitted with .delay(), not called in the foreground: only those have a queue."""
    return any(s.name == "Scheduled" and s.state_details.deferred for s in states)


def since(state: State) -> datetime:
    # A retry waits in a Scheduled state (AwaitingRetry) until its scheduled time.
    return max(state.timestamp, state.state_details.scheduled_time or state.timestamp)


class Pass:
    """One look at the runs: which are lost, and which only wait."""

    def __init__(self, client: PrefectClient, opts: argparse.Namespace, seen: dict):
        self.client, self.opts, self.seen = client, opts, seen
        self.now = datetime.now(UTC)
        self.scheduled_after = timedelta(seconds=opts.scheduled_after)
        self.running_after = timedelta(seconds=opts.running_after)

    async def idle(self, key: str, servers: dict[str, set[str]], runs: list[TaskRun]) -> bool:
        """Every task server that serves `key` has been subscribed and has run nothing for
        --scheduled-after seconds. An idle task server takes a queued run at once, so a run
        of `key` that is still Scheduled is not in the queue, and no task server holds it."""
        mine = [server for server, keys in servers.items() if key in keys]
        if any(self.now - self.seen[server] < self.scheduled_after for server in mine):
            return False  # it may be taking runs right now
        keys = set().union(*(servers[server] for server in mine))
        if any(run.task_key in keys and not queued(run) for run in runs):
            return False  # a run of theirs is Pending, Running or waiting to retry
        ended = await task_runs(
            self.client, end_time={"after_": (self.now - self.scheduled_after).isoformat()}
        )
        return not any(run.task_key in keys for run in ended)

    async def overtaken(self, key: str, runs: list[TaskRun]) -> list[TaskRun]:
        """The runs of `key` that a run submitted after them overtook long ago. The queue
        is first in, first out, so they left it before that run did. A task server that
        takes a run while its slots are busy holds it until a slot frees (Prefect's serve()
        holds two), so after twice --running-after none holds them any more."""
        started = await task_runs(
            self.client,
            start_time={
                "after_": min(run.state.timestamp for run in runs).isoformat(),
                "before_": (self.now - 2 * self.running_after).isoformat(),
            },
        )
        for later in started:  # the latest submitted first
            submitted = later.expected_start_time
            if later.task_key == key and submitted and background(await self.history(later)):
                return [run for run in runs if submitted > run.state.timestamp + CLOCKS]
        return []

    async def silent(self, run: TaskRun) -> bool:
        """No news of an in-flight run for --running-after seconds: no new state, and no
        heartbeat from a task server running it."""
        if self.now - since(run.state) <= self.running_after:
            return False
        response = await self.client.request(
            "POST",
            "/events/filter",
            json={
                "filter": {
                    "occurred": {"since": (self.now - self.running_after).isoformat()},
                    "event": {"name": [HEARTBEAT]},
                    "resource": {"id": [f"prefect.task-run.{run.id}"]},
                },
                "limit": 1,
            },
        )
        response.raise_for_status()
        return not response.json()["events"]

    def waited(self, run: TaskRun) -> bool:
        """Scheduled for --scheduled-after seconds: long enough to have been delivered."""
        return self.now - run.state.timestamp > self.scheduled_after

    async def history(self, run: TaskRun) -> list[State]:
        return await self.client.read_task_run_states(run.id)

    async def lost(self, runs: list[TaskRun], servers: dict[str, set[str]]) -> list[TaskRun]:
        lost = []
        waiting = [run for run in runs if queued(run) and self.waited(run)]
        for key in sorted({run.task_key for run in waiting}):
            mine = [run for run in waiting if run.task_key == key]
            if await self.idle(key, servers, runs):
                lost += mine
            else:
                lost += await self.overtaken(key, mine)
        for run in runs:
            if not queued(run) and await self.silent(run) and background(await self.history(run)):
                lost.append(run)
        return lost


async def requeue(client: PrefectClient, run: TaskRun) -> bool:
    # Act only if the run is still in the state this pass judged lost.
    current = await client.read_task_run(run.id)
    if current.state is None:  # the server is writing its new state right now
        logger.info(f"{run.id}: moving on to {current.state_name}, left alone")
        return False
    if current.state.id != run.state.id:
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


async def reconcile(client: PrefectClient, opts: argparse.Namespace, seen: dict) -> int:
    """One pass; returns how many runs it re-enqueued. `seen` keeps, from one pass to the
    next, when each task server was first seen subscribed."""
    # Task servers first, then runs: a run a task server takes in between shows as taken.
    servers = await task_servers(client)
    now = datetime.now(UTC)
    for server in list(seen):
        if server not in servers:
            del seen[server]
    for server in servers:
        seen.setdefault(server, now)
    unfinished = await task_runs(
        client, state={"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}
    )
    runs = [run for run in unfinished if run.state]  # None: being written right now
    served = set().union(*servers.values())
    check = Pass(client, opts, seen)
    lost = await check.lost([run for run in runs if run.task_key in served], servers)
    # Runs nobody serves: a new delivery would not help.
    unserved = [r for r in runs if r.task_key not in served and queued(r) and check.waited(r)]
    for key in sorted({run.task_key for run in unserved}):
        count = sum(run.task_key == key for run in unserved)
        logger.warning(f"no task server serves {key} right now: {count} runs left as they are")
    requeued = 0
    for run in lost:
        requeued += await requeue(client, run)
    logger.info(f"pass: {len(runs)} unfinished, {len(lost)} lost, {requeued} re-enqueued")
    return requeued


async def main() -> None:
    opts = options()
    logging.basicConfig(format="%(asctime)s | %(levelname)-7s | recover - %(message)s")
    logger.setLevel(logging.INFO)
    seen: dict[str, datetime] = {}
    async with get_client() as client:
        while True:
            try:
                await reconcile(client, opts, seen)
            except Exception as exc:  # the Prefect server restarting, for example
                if opts.once:
                    raise
                logger.error(f"pass failed, trying again: {exc!r}")
            if opts.once:
                return
            await asyncio.sleep(opts.interval)


if __name__ == "__main__":
    asyncio.run(main())
