"""Step 08's POST /jobs, GET /jobs/{id} and /health, with Celery in place of Prefect.

uvicorn benchmarks.api_celery:app   (with step 08's folder on PYTHONPATH, for `tasks`)
"""

from uuid import UUID

from celery.result import AsyncResult
from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool

from benchmarks.celery_jobs import app as celery_app
from benchmarks.celery_jobs import score

from tasks import Document

STATUS = {"PENDING": "queued", "STARTED": "running", "RETRY": "running", "SUCCESS": "completed"}

app = FastAPI(title="Document scoring (Celery)")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/jobs", status_code=202)
async def create_job(document: Document, response: Response) -> dict:
    # .delay() is a blocking Redis call: keep it off the event loop, as step 08 does.
    result = await run_in_threadpool(score.delay, document.model_dump())
    response.headers["Location"] = f"/jobs/{result.id}"
    return {"id": result.id, "status": "queued"}


@app.get("/jobs/{job_id}")
async def read_job(job_id: UUID) -> dict:
    state = await run_in_threadpool(lambda: AsyncResult(str(job_id), app=celery_app).state)
    return {"id": str(job_id), "status": STATUS.get(state, "failed")}
