"""Put lost background task runs back in the queue; run it beside your task servers.

Prefect 3.9 delivers a background run once. A run is lost when the Prefect server restarted
with it in its in-memory queue (it stays Scheduled), or when the task server that took it
died (it stays Scheduled, Pending or Running). A run that only waits in the queue looks like
a lost Scheduled one, and queuing it again would deliver it twice: this re-enqueues a run
only with proof that it is lost, and reports runs whose task key no task server serves. A
run it re-enqueues may have done some or all of its work: tasks must be idempotent.
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default, meaning in [
        ("--scheduled-after", 120, "never touch a run Scheduled for less than this many s"),
        ("--running-after", 600, "re-enqueue a run in flight with no news for this many s"),
        ("--interval", 10, "seconds between two passes"),
    ]:
        env = "RECOVER_" + flag[2:].replace("-", "_").upper()  # RECOVER_SCHEDULED_AFTER, ...
        default = float(os.environ.get(env, default))
        parser.add_argument(flag, type=float, default=default, help=f"{meaning} ({default:g})")
    parser.add_argument("--once", action="store_true", help="make one pass, then exit")
    return parser.parse_args()


async def task_runs(client: PrefectClient, **filters) -> list[TaskRun]:
    runs: list[TaskRun] = []
    while True:
        body = {"task_runs": filters, "sort": "EXPECTED_START_TIME_DESC", "limit": PAGE}
        body["offset"] = len(runs)
        response = await client.request("POST", "/task_runs/filter", json=body)
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


def since(state: State) -> datetime:
    # A retry waits in a Scheduled state (AwaitingRetry) until its scheduled time.
    return max(state.timestamp, state.state_details.scheduled_time or state.timestamp)


class Pass:
    """One look at the runs: which are lost, and which only wait."""

    def __init__(self, client: PrefectClient, opts: argparse.Namespace, seen: dict):
        self.client, self.seen = client, seen
        self.now = datetime.now(UTC)
        self.scheduled_after = timedelta(seconds=opts.scheduled_after)
        self.running_after = timedelta(seconds=opts.running_after)

    # region lost
    async def lost(self, runs: list[TaskRun], servers: dict[str, set[str]]) -> list[TaskRun]:
        lost = []
        # Scheduled long enough to have been delivered: lost only if the task servers of
        # its key are idle, or if a run submitted after it started long ago (the queue is
        # first in, first out). Otherwise it may be waiting its turn.
        waiting = [run for run in runs if queued(run) and self.waited(run)]
        for key in sorted({run.task_key for run in waiting}):
            mine = [run for run in waiting if run.task_key == key]
            if await self.idle(key, servers, runs):
                lost += mine
            else:
                lost += await self.overtaken(key, mine)
        # In flight, no news for --running-after: no new state (even on its way), no heartbeat.
        for run in runs:
            if not queued(run) and await self.silent(run) and await self.background(run):
                lost.append(run)
        return lost
        # endregion lost

    def waited(self, run: TaskRun) -> bool:
        """Scheduled for --scheduled-after seconds: long enough to have been delivered."""
        return self.now - run.state.timestamp > self.scheduled_after

    async def background(self, run: TaskRun) -> bool:
        """Submitted with .delay(), not called in the foreground: only those have a queue."""
        states = await self.client.read_task_run_states(run.id)
        return any(s.name == "Scheduled" and s.state_details.deferred for s in states)

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
        after = (self.now - self.scheduled_after).isoformat()
        ended = await task_runs(self.client, end_time={"after_": after})
        return not any(run.task_key in keys for run in ended)

    async def overtaken(self, key: str, runs: list[TaskRun]) -> list[TaskRun]:
        """The runs of `key` that a run submitted after them overtook long ago: they left
        the queue before it. A task server whose slots are busy holds a run it took until a
        slot frees (Prefect's serve() holds two), so after twice --running-after none does."""
        started = await task_runs(
            self.client,
            start_time={
                "after_": min(run.state.timestamp for run in runs).isoformat(),
                "before_": (self.now - 2 * self.running_after).isoformat(),
            },
        )
        for later in started:  # the latest submitted first
            submitted = later.expected_start_time
            if later.task_key == key and submitted and await self.background(later):
                return [run for run in runs if submitted > run.state.timestamp + CLOCKS]
        return []

    async def silent(self, run: TaskRun) -> bool:
        """No news of an in-flight run for --running-after seconds: no new state, no
        heartbeat from a task server running it, and no new state stored as an event that
        the server has not written to the run yet (run states arrive as events)."""
        if self.now - since(run.state) <= self.running_after:
            return False
        recently = self.now - self.running_after
        beating = await self.news(run, recently, name=[HEARTBEAT])
        after_its_state = max(run.state.timestamp + timedelta(microseconds=1), recently)
        moved_on = await self.news(run, after_its_state, prefix=["prefect.task-run."])
        return not beating and not moved_on

    async def news(self, run: TaskRun, since: datetime, **names: list[str]) -> bool:
        """An event about the run since `since`, of the given names (name= or prefix=)."""
        about = {
            # Until a day ahead: a task server's clock may run ahead of the API's.
            "occurred": {
                "since": since.isoformat(),
                "until": (self.now + timedelta(days=1)).isoformat(),
            },
            "event": names,
            "resource": {"id": [f"prefect.task-run.{run.id}"]},
        }
        response = await self.client.request(
            "POST", "/events/filter", json={"filter": about, "limit": 1}
        )
        response.raise_for_status()
        return bool(response.json()["events"])


# region requeue
async def requeue(client: PrefectClient, run: TaskRun) -> bool:
    # Act only if the run is still in the state this pass judged lost.
    current = await client.read_task_run(run.id)
    if current.state is None or current.state.id != run.state.id:
        logger.info(f"{run.id}: moved on to {current.state_name}, left alone")
        return False
    # A new Scheduled state, deferred (so the server queues it), carrying the id under which
    # the task server finds the run's arguments, as the run's first Scheduled state did.
    states = await client.read_task_run_states(run.id)
    parameters = [s.state_details.task_parameters_id for s in states]
    scheduled = Scheduled(name="Requeued")
    scheduled.state_details.deferred = True
    scheduled.state_details.task_parameters_id = next(filter(None, reversed(parameters)), None)
    result = await client.set_task_run_state(run.id, scheduled, force=True)
    if result.state is None or result.state.type != StateType.SCHEDULED:
        logger.warning(f"{run.id}: the server refused: {result.details}")
        return False
    logger.info(f"{run.id}: re-enqueued ({run.state.name} since {run.state.timestamp:%H:%M:%S})")
    return True
    # endregion requeue


async def reconcile(client: PrefectClient, opts: argparse.Namespace, seen: dict) -> int:
    """One pass; returns how many runs it re-enqueued. `seen` keeps, from one pass to the
    next, when each task server was first seen subscribed."""
    # Task servers first, then runs: a run a task server takes in between shows as taken.
    servers = await task_servers(client)
    for server in set(seen) - set(servers):
        del seen[server]
    for server in servers:
        seen.setdefault(server, datetime.now(UTC))
    states = {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}}
    runs = [run for run in await task_runs(client, state=states) if run.state]  # None: moving
    served = set().union(*servers.values())
    check = Pass(client, opts, seen)
    lost = await check.lost([run for run in runs if run.task_key in served], servers)
    # Runs nobody serves: a new delivery would not help.
    unserved = [r for r in runs if r.task_key not in served and queued(r) and check.waited(r)]
    for key in sorted({run.task_key for run in unserved}):
        count = sum(run.task_key == key for run in unserved)
        logger.warning(f"no task server serves {key} right now: {count} runs left as they are")
    requeued = sum([await requeue(client, run) for run in lost])
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
