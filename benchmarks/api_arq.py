"""Step 08's POST /jobs, GET /jobs/{id} and /health, with arq in place of Prefect.

uvicorn benchmarks.api_arq:app   (with step 08's folder on PYTHONPATH, for `tasks`)
"""

from contextlib import asynccontextmanager

from arq import create_pool
from arq.jobs import Job, JobStatus
from fastapi import FastAPI, Request, Response

from benchmarks.arq_jobs import REDIS

from tasks import Document


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.redis = await create_pool(REDIS)
    yield
    await app.state.redis.aclose()


app = FastAPI(title="Document scoring (arq)", lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/jobs", status_code=202)
async def create_job(document: Document, request: Request, response: Response) -> dict:
    job = await request.app.state.redis.enqueue_job("score", document.model_dump())
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return {"id": job.job_id, "status": "queued"}


@app.get("/jobs/{job_id}")
async def read_job(job_id: str, request: Request) -> dict:
    job = Job(job_id, request.app.state.redis)
    status = await job.status()
    if status == JobStatus.complete:
        info = await job.result_info()
        return {"id": job_id, "status": "completed" if info.success else "failed"}
    waiting = {JobStatus.in_progress: "running", JobStatus.not_found: "unknown"}
    return {"id": job_id, "status": waiting.get(status, "queued")}
