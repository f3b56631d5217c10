import asyncio
import time

from prefect import get_client

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from queue_status import queue_status
from tasks import make_thumbnail

NAMES = [f"photo-{n}.jpg" for n in range(12)]


async def watch(task_key: str, timeout: float = 120) -> None:
    """Look at the queue once a second, as a dashboard would, until the backlog is gone."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            rows = [row for row in await queue_status(client) if row.task_key == task_key]
            if not rows or rows[0].waiting + rows[0].running + rows[0].cancelling == 0:
                print("drained")
                return
            r = rows[0]
            oldest = f"{r.oldest_wait_seconds:.1f} s" if r.oldest_wait_seconds else "-"
            print(
                f"waiting {r.waiting:>2}, oldest {oldest:>6}, running {r.running},"
                f" stuck {r.stuck}, task servers {r.task_servers}"
            )
            await asyncio.sleep(1)
    raise TimeoutError(f"{task_key} still has runs after {timeout:.0f} s: is a task server up?")


if __name__ == "__main__":
    futures = [make_thumbnail.delay(name) for name in NAMES]
    print(f"submitted {len(futures)} runs of {make_thumbnail.task_key}")
    asyncio.run(watch(make_thumbnail.task_key))
    results = [result_of(future, timeout=60) for future in futures]
    print(f"{len(results)} thumbnails made")
