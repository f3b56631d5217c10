"""How the background-task queue stands, per task key: the numbers an alert watches.

    python queue_status.py                  a table
    python queue_status.py --json           the same, as JSON, for your monitoring
    python queue_status.py --stuck-after 60 count runs Running for over 60 s as stuck

Run it anywhere the Prefect API is reachable (PREFECT_API_URL); it changes nothing.
"""

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType, TaskRun

PAGE = 200  # the most runs the API returns at once


@dataclass
class KeyStatus:
    task_key: str  # the task's name and a hash of its code: one per version of a task
    waiting: int  # runs in the queue
    oldest_wait_seconds: float | None  # how long the oldest of them has waited
    running: int  # runs a task server has taken (Pending or Running)
    stuck: int  # runs Running for longer than --stuck-after
    task_servers: int  # task servers subscribed to this key now; 0 with runs waiting: alert


async def background_runs(client: PrefectClient) -> list[TaskRun]:
    """Every background run (no flow run) that is waiting or in flight, page by page."""
    runs: list[TaskRun] = []
    while True:
        body = {
            "task_runs": {
                "flow_run_id": {"is_null_": True},
                "state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}},
            },
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": PAGE,
            "offset": len(runs),
        }
        response = await client.request("POST", "/task_runs/filter", json=body)
        page = [TaskRun.model_validate(run) for run in response.raise_for_status().json()]
        runs += page
        if len(page) < PAGE:
            return runs


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
    status = {key: KeyStatus(key, 0, None, 0, 0, n) for key, n in servers.items()}
    for run in runs:
        if run.state is None:  # the moment the server writes a new state: next time
            continue
        key = status.setdefault(run.task_key, KeyStatus(run.task_key, 0, None, 0, 0, 0))
        age = (now - run.state.timestamp).total_seconds()
        if run.state.type == StateType.SCHEDULED and run.state.name != "AwaitingRetry":
            key.waiting += 1
            key.oldest_wait_seconds = max(age, key.oldest_wait_seconds or 0)
        else:  # Pending, Running, or waiting on its task server for a retry
            key.running += 1
            key.stuck += run.state.type == StateType.RUNNING and age > stuck_after
    return sorted(status.values(), key=lambda s: s.task_key)
    # endregion status


def table(rows: list[KeyStatus]) -> str:
    lines = [f"{'task key':<40} waiting  oldest wait  running  stuck  task servers"]
    for r in rows:
        oldest = "-" if r.oldest_wait_seconds is None else f"{r.oldest_wait_seconds:.1f} s"
        lines.append(
            f"{r.task_key:<40} {r.waiting:>7}  {oldest:>11}  {r.running:>7}  {r.stuck:>5}"
            f"  {r.task_servers:>12}"
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
