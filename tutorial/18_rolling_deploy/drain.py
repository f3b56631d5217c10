"""Wait until no run of a task key waits in the queue or is in flight: then its task servers
can stop.

    python drain.py make_thumbnail-1a2b3c4d [--timeout 600]

Exit code 0 once drained, 1 if runs remain after --timeout (it prints how many), 2 if the key
has no unfinished run and no task server: a typo, or a key long gone (step 16's
queue_status.py lists the keys). Stop the submitters of the old version first: a run
submitted after the drain would wait for ever.
"""

import argparse
import asyncio
import sys
import time
from collections import Counter

from prefect.client.orchestration import PrefectClient, get_client

PAGE = 200  # the most runs the API returns at once
# Every state a background run is in until it ends: a Cancelling run still needs a task
# server of its key to end it (step 15).
UNFINISHED = ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "PAUSED"]


async def unfinished(client: PrefectClient, task_key: str) -> Counter[str]:
    """Background runs (no flow run) of task_key not finished yet, by state type. The API
    filters task runs by state, not by key: the key is checked here. Each page starts at the
    expected start time where the last one ended (step 16's queue_status.py pages the same
    way): a run that finishes meanwhile must not shift the next page and hide a run."""
    seen: set[str] = set()
    counts: Counter[str] = Counter()
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
        page = (await client.request("POST", "/task_runs/filter", json=body)).json()
        new = [run for run in page if run["id"] not in seen]
        seen |= {run["id"] for run in new}
        # state_type, not state: while the server writes a new state, the run has none.
        counts.update(run["state_type"] for run in new if run["task_key"] == task_key)
        if len(page) < PAGE:
            return counts
        if new:
            since, offset = page[-1]["expected_start_time"], 0
        else:  # a whole page of runs expected at one instant: read on past them
            offset += PAGE


async def served(client: PrefectClient, task_key: str) -> bool:
    """Is a task server subscribed to task_key now?"""
    servers = (await client.request("POST", "/task_workers/filter", json={})).json()
    return any(task_key in server["task_keys"] for server in servers)


# region drain
async def drain(task_key: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        if not await unfinished(client, task_key) and not await served(client, task_key):
            raise LookupError(f"no unfinished run and no task server has the key {task_key}")
        while True:
            counts = await unfinished(client, task_key)
            waiting, in_flight = counts["SCHEDULED"], counts.total() - counts["SCHEDULED"]
            print(f"{task_key}: {waiting} waiting, {in_flight} in flight", flush=True)
            if not counts:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(1)
    # endregion drain


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "task_key", help="the old version's key, for example make_thumbnail-1a2b3c4d"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds (600)")
    args = parser.parse_args()
    try:
        sys.exit(0 if asyncio.run(drain(args.task_key, args.timeout)) else 1)
    except LookupError as error:
        print(f"{error}: check it (step 16's queue_status.py lists the keys)", file=sys.stderr)
        sys.exit(2)
