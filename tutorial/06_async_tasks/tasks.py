import asyncio
import os
import threading
import time

from prefect import task


@task
async def fetch_report(report_id: int) -> dict:
    started = time.time()
    # Stands in for a slow call made with an async client (httpx.AsyncClient, asyncpg, ...).
    # While this run awaits, the task server's event loop runs the others.
    await asyncio.sleep(5)
    return {
        "report": report_id,
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "started": started,
        "ended": time.time(),
    }
