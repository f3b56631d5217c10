"""How the background-task queue stands, per task key: the numbers an alert watches.

    python queue_status.py                  a table
    python queue_status.py --json           the same, as JSON, for your monitoring
    python queue_status.py --stuck-after 60 count runs in flight for over 60 s as stuck

Run it anywhere the Prefect API is reachable (PREFECT_API_URL); it changes nothing.
"""

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType, TaskRun

PAGE = 200  # the most runs the API returns at once
# Every state a background run is in until it ends. A Cancelling run still needs a task
# server of its key to end it (step 15); Paused is rare for a background run, but not final.
UNFINISHED = ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED"]


@dataclass
class KeyStatus:
    task_key: str  # the task's name and a hash of its code: one per version of a task
    waiting: int = 0  # runs in the queue
    oldest_wait_seconds: float | None = None  # how long the oldest of them has waited
    running: int = 0  # runs a task server has taken (Pending, Running, a retry to come)
    cancelling: int = 0  # cancelled, until the task's next checkpoint ends it (step 15)
    stuck: int = 0  # runs taken or cancelling with no new state for over --stuck-after
    task_servers: int = 0  # subscribed to this key now; 0 with runs waiting: alert


async def background_runs(client: PrefectClient) -> list[TaskRun]:
    """Every background run (no flow run) not finished yet. Each page starts at the expected
    start time where the last one ended: a run that finishes meanwhile leaves the list without
    shifting the next page, as it would with an offset, which then skips a run."""
    runs: dict[UUID, TaskRun] = {}
    since, offset = None, 0
    while True:
        body = {
            "task_runs": {
                "flow_run_id": {"is_null_": True},
                "state": {"type": {"any_": UNFINISHED}},
                "expected_start_time": {"after_": since},  # inclusive: ids skip repeats
            },
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": PAGE,
            "offset": offset,
        }
        response = await client.request("POST", "/task_runs/filter", json=body)
        page = [TaskRun.model_validate(run) for run in response.raise_for_status().json()]
        new = {run.id: run for run in page if run.id not in runs}
        runs |= new
        if len(page) < PAGE:
            return list(runs.values())
        if new:
            since, offset = page[-1].expected_start_time.isoformat(), 0
        else:  # a whole page of runs expected at one instant: read on past them
            offset += PAGE


async def task_servers(client: PrefectClient) -> dict[str, int]:
    """How many task servers are subscribed to each task key right now."""
    response = await client.request("POST", "/task_workers/filter", json={})
    counts: dict[str, int] = {}
    for server in response.raise_for_status().json():
        for key in server["task_keys"]:
            counts[key] = counts.get(key, 0) + 1
    return counts


# region status
async def queue_status(client: PrefectClient, stuck_after: float = 600) -> list[KeyStatus]:
    runs, servers = await background_runs(client), await task_servers(client)
    now = datetime.now(UTC)
    status = {key: KeyStatus(key, task_servers=n) for key, n in servers.items()}
    for run in runs:
        key = status.setdefault(run.task_key, KeyStatus(run.task_key))
        # Since its latest state. While the server writes a new one the run has none for a
        # moment: it still counts, with no age.
        age = (now - run.state.timestamp).total_seconds() if run.state else 0
        if run.state_type == StateType.SCHEDULED and run.state_name != "AwaitingRetry":
            key.waiting += 1
            key.oldest_wait_seconds = max(age, key.oldest_wait_seconds or 0)
            continue
        if run.state_type == StateType.CANCELLING:
            key.cancelling += 1
        else:  # Pending, Running, Paused, or waiting on its task server for a retry
            key.running += 1
        key.stuck += age > stuck_after
    return sorted(status.values(), key=lambda s: s.task_key)
    # endregion status


def table(rows: list[KeyStatus]) -> str:
    lines = [f"{'task key':<40} waiting  oldest wait  running  cancelling  stuck  task servers"]
    for r in rows:
        oldest = "-" if r.oldest_wait_seconds is None else f"{r.oldest_wait_seconds:.1f} s"
        lines.append(
            f"{r.task_key:<40} {r.waiting:>7}  {oldest:>11}  {r.running:>7}  {r.cancelling:>10}"
            f"  {r.stuck:>5}  {r.task_servers:>12}"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.add_argument(
        "--stuck-after", type=float, default=600, help="seconds; your longest timeout_seconds"
    )
    args = parser.parse_args()
    async with get_client() as client:
        rows = await queue_status(client, args.stuck_after)
    print(json.dumps([asdict(row) for row in rows]) if args.json else table(rows))


if __name__ == "__main__":
    asyncio.run(main())
