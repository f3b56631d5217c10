from typing import Literal
from uuid import UUID

from fastapi import FastAPI, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, Field

from tasks import Document, DocumentScore, score_document

# Every run this API submits carries this tag, and GET /jobs/{id} shows no other run. Not the
# task key: it changes with every change to the task's code, so jobs submitted before a deploy
# would vanish.
JOB_TAG = "api:score_document"

JobStatus = Literal["queued", "running", "completed", "failed", "cancelled"]

# Our own small vocabulary, so clients never depend on Prefect's state names.
STATUS: dict[StateType, JobStatus] = {
    StateType.SCHEDULED: "queued",  # waiting for a task server
    StateType.PENDING: "running",  # a task server has it
    StateType.RUNNING: "running",
    StateType.PAUSED: "running",
    StateType.COMPLETED: "completed",  # also Prefect's "Cached"
    StateType.FAILED: "failed",  # also "TimedOut"
    StateType.CRASHED: "failed",
    StateType.CANCELLING: "cancelled",
    StateType.CANCELLED: "cancelled",
}


class Job(BaseModel):
    id: UUID = Field(
        description="The job's id: its Prefect task run id",
        examples=["7cf49c6e-8db6-4af8-bb9f-7352c9f6dd00"],
    )
    status: JobStatus
    result: DocumentScore | None = Field(None, description="Set once the job is completed")
    error: str | None = Field(
        None,
        description="Why the job failed, once it has",
        examples=[
            "Task run encountered an exception ValueError: 'Notes' does not look like English text"
        ],
    )


class NotFound(BaseModel):
    detail: str = Field(examples=["job not found"])


app = FastAPI(title="Document scoring", description="Score documents in the background.")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def submit(document: Document) -> UUID:
    # .delay() is synchronous and does network and disk I/O: keep it off the event loop.
    with tags(JOB_TAG):
        return score_document.delay(document).task_run_id


@app.post(
    "/jobs",
    status_code=202,
    responses={202: {"headers": {"Location": {"description": "Where to poll the job"}}}},
)
async def create_job(document: Document, response: Response) -> Job:
    job_id = await run_in_threadpool(submit, document)
    response.headers["Location"] = f"/jobs/{job_id}"
    return Job(id=job_id, status="queued")


@app.get("/jobs/{job_id}", responses={404: {"model": NotFound}})
async def read_job(job_id: UUID) -> Job:
    async with get_client() as client:
        try:
            run = await client.read_task_run(job_id)
        except ObjectNotFound:
            run = None
        # Other runs on the same Prefect server are not ours to show: same answer as unknown ids.
        if run is None or JOB_TAG not in run.tags:
            raise HTTPException(status_code=404, detail="job not found")
        # Read the state once and answer: never wait for the run here.
        state = run.state
        if state is None:
            # On SQLite the server records a new state in two writes; in between, the run
            # has none. The last state it has recorded is still the truth.
            recorded = await client.read_task_run_states(run.id)
            state = recorded[-1] if recorded else None

    job = Job(id=run.id, status=STATUS[state.type] if state else "queued")
    if state and state.name == "AwaitingRetry":
        job.status = "running"  # a retry happens in place, on the same task server
    if job.status == "completed":
        # Loads the result file the task server wrote: the app needs the same result storage.
        job.result = DocumentScore.model_validate(await state.aresult())
    elif job.status == "failed":
        job.error = state.message
    return job
