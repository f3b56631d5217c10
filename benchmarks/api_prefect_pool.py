"""Step 08's app with one change: POST /jobs submits in a small pool of processes instead of
FastAPI's threadpool. `.delay()` is CPU work that holds the GIL: in a thread of the app's own
process it delays every other request, /health included.

    uvicorn --app-dir tutorial/08_fastapi_jobs benchmarks.api_prefect_pool:app
"""

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager

import api as step_08
from fastapi import FastAPI, Response

from tasks import Document

WORKERS = 2


def warm_up() -> None:
    """Runs in a pool process: importing step 08's app there loads Prefect once, up front."""


@asynccontextmanager
async def lifespan(app: FastAPI):
    # spawn, not fork: a forked copy of a process that already runs threads and an event loop
    # is not safe.
    pool = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    # Start every process before the first request rather than during it.
    await asyncio.gather(*(loop.run_in_executor(pool, warm_up) for _ in range(WORKERS)))
    app.state.pool = pool
    yield
    pool.shutdown()


app = FastAPI(title=step_08.app.title, description=step_08.app.description, lifespan=lifespan)
app.get("/health")(step_08.health)
app.get("/jobs/{job_id}", responses={404: {"model": step_08.NotFound}})(step_08.read_job)


@app.post("/jobs", status_code=202)
async def create_job(document: Document, response: Response) -> step_08.Job:
    loop = asyncio.get_running_loop()
    job_id = await loop.run_in_executor(app.state.pool, step_08.submit, document)
    response.headers["Location"] = f"/jobs/{job_id}"
    return step_08.Job(id=job_id, status="queued")
