"""Step 08's app with one change: POST /jobs submits in a small pool of processes instead of
on the app's event loop. A submission is CPU work that holds the GIL (Prefect serialises its
whole settings into every parameters file): in the app's own process it delays every other
request, /health included.

    uvicorn --app-dir tutorial/08_fastapi_jobs benchmarks.api_prefect_pool:app
"""

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from uuid import UUID

import api as step_08
from fastapi import FastAPI
from prefect.client.orchestration import PrefectClient, get_client

from tasks import Document

WORKERS = 2
enqueue = step_08.submit  # step 08's own submission, which the pool processes run
pool: ProcessPoolExecutor


def warm_up() -> None:
    """Runs in a pool process: importing step 08's app there loads Prefect once, up front."""


def submit_here(job_id: UUID, document: Document, client: str) -> None:
    """Runs in a pool process, on a Prefect client of its own (as `.delay()` would)."""

    async def run() -> None:
        async with get_client() as prefect:
            await enqueue(prefect, job_id, document, client)

    asyncio.run(run())


async def submit_in_pool(_: PrefectClient, job_id: UUID, document: Document, client: str):
    # Still inside step 08's prefect_or_503(): a pool that is too slow is a 503 after 5 s.
    await asyncio.get_running_loop().run_in_executor(pool, submit_here, job_id, document, client)


@asynccontextmanager
async def lifespan(app: FastAPI):
    global pool
    # spawn, not fork: a forked copy of a process that already runs threads and an event loop
    # is not safe.
    pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    # Start every process before the first request rather than during it.
    await asyncio.gather(*(loop.run_in_executor(pool, warm_up) for _ in range(WORKERS)))
    async with step_08.lifespan(app):  # keys, the Idempotency-Key table, the Prefect client
        yield
    pool.shutdown()


app = FastAPI(title=step_08.app.title, description=step_08.app.description, lifespan=lifespan)
# Step 08's endpoints as they are; its POST /jobs now calls submit_in_pool to submit.
for route in step_08.app.router.routes:
    if route.path in ("/health", "/jobs", "/jobs/{job_id}"):
        app.router.routes.append(route)
step_08.submit = submit_in_pool
