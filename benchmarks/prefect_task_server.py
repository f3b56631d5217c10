"""A task server for the benchmark's jobs: `python -m benchmarks.prefect_task_server LIMIT`."""

import asyncio
import sys

from prefect.task_worker import aserve

from benchmarks.prefect_jobs import noop, pause

if __name__ == "__main__":
    # As the lessons' task servers do: serve() can freeze (tutorial/SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(noop, pause, limit=int(sys.argv[1])))
