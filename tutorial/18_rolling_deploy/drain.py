"""Wait until no run of a task key waits in the queue or runs: then its task servers can stop.

    python drain.py make_thumbnail-1a2b3c4d [--timeout 600]

Exit code 0 once drained, 1 if runs remain after --timeout (it prints how many). Stop the
submitters of the old version first: a run submitted after the drain would wait for ever.
"""

import argparse
import asyncio
import sys
import time

from prefect.client.orchestration import PrefectClient, get_client

PAGE = 200  # the most runs the API returns at once


async def unfinished(client: PrefectClient, task_key: str) -> dict[str, int]:
    """Runs of task_key waiting (Scheduled) or in flight (Pending, Running), by state type.
    The API filters task runs by state, not by key: the key is checked here."""
    counts = {"SCHEDULED": 0, "PENDING": 0, "RUNNING": 0}
    offset = 0
    while True:
        body = {
            "task_runs": {"state": {"type": {"any_": list(counts)}}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": PAGE,
            "offset": offset,
        }
        page = (await client.request("POST", "/task_runs/filter", json=body)).json()
        for run in page:
            if run["task_key"] == task_key:
                # state_type, not state: while the server writes a new state, the run has
                # none, but it is still counted.
                counts[run["state_type"]] += 1
        if len(page) < PAGE:
            return counts
        offset += PAGE


# region drain
async def drain(task_key: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            counts = await unfinished(client, task_key)
            print(
                f"{task_key}: {counts['SCHEDULED']} waiting, "
                f"{counts['PENDING'] + counts['RUNNING']} in flight",
                flush=True,
            )
            if not any(counts.values()):
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
    sys.exit(0 if asyncio.run(drain(args.task_key, args.timeout)) else 1)
