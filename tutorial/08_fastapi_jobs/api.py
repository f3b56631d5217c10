import hashlib
import hmac
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID, uuid4

import anyio
import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prefect import tags
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import State, StateType, TaskRun
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import get_current_settings
from prefect.states import Cancelling
from pydantic import BaseModel, Field

from tasks import Document, DocumentScore, score_document

logger = logging.getLogger("jobs_api")

# Every run this API submits carries this tag, and GET /jobs/{id} shows no other run. Not the
# task key: it changes with every change to the task's code, so jobs submitted before a deploy
# would vanish.
JOB_TAG = "api:score_document"

# A request waits this long for the Prefect API, retries included, then answers 503: a Prefect
# server that is down or whose queue is full must not hold clients (or the app) for minutes.
PREFECT_TIMEOUT = 5.0
RETRY_AFTER = "5"

# The task raises ValueError for a document it cannot score: that message is written for the
# client. Any other failure (a bug, a crash) may carry internals: the client gets none of it.
CLIENT_ERROR = "Task run encountered an exception ValueError: "

JobStatus = Literal["queued", "running", "cancelling", "completed", "failed", "cancelled"]

# Our own small vocabulary, so clients never depend on Prefect's state names.
STATUS: dict[StateType, JobStatus] = {
    StateType.SCHEDULED: "queued",  # waiting for a task server
    StateType.PENDING: "running",  # a task server has it
    StateType.RUNNING: "running",
    StateType.PAUSED: "running",
    StateType.COMPLETED: "completed",  # also Prefect's "Cached"
    StateType.FAILED: "failed",  # also "TimedOut"
    StateType.CRASHED: "failed",
    StateType.CANCELLING: "cancelling",  # asked to stop: it runs to its next checkpoint
    StateType.CANCELLED: "cancelled",  # stopped
}


class Job(BaseModel):
    id: UUID = Field(description="The job's id: its Prefect task run id")
    status: JobStatus
    result: DocumentScore | None = Field(None, description="Set once the job is completed")
    error: str | None = Field(None, description="Why the job failed, or has no result")


class Problem(BaseModel):
    detail: str = Field(examples=["job not found"])


def problem(description: str, **headers: str) -> dict:
    """An error response, as the OpenAPI docs show it."""
    documented = {name: {"description": text} for name, text in headers.items()}
    return {"model": Problem, "description": description, "headers": documented}


UNAUTHORIZED = problem("Missing or wrong API key", **{"WWW-Authenticate": "Bearer"})
UNAVAILABLE = problem("Prefect cannot be reached now", **{"Retry-After": "Seconds to wait"})
POST_ANSWERS = {
    202: {"headers": {"Location": {"description": "Where to poll the job"}}},
    400: problem("The body cannot be read (FastAPI's answer to bytes that are not text)"),
    401: UNAUTHORIZED,
    409: problem("The Idempotency-Key was used with another document"),
    503: UNAVAILABLE,
}
GET_ANSWERS = {401: UNAUTHORIZED, 404: problem("No such job"), 503: UNAVAILABLE}
DELETE_ANSWERS = {**GET_ANSWERS, 409: problem("The job has already completed or failed")}


# --- clients and their keys -----------------------------------------------------------


def load_api_keys() -> dict[str, bytes]:
    """JOBS_API_KEYS="client-a=<key>,client-b=<key>": one key per client, from your secret
    store. There is no default: without keys the app refuses to start."""
    pairs = [pair.strip().partition("=") for pair in os.environ.get("JOBS_API_KEYS", "").split(",")]
    keys = {name: key.encode() for name, _, key in pairs if name}
    if not keys:
        raise RuntimeError("set JOBS_API_KEYS (client=key pairs): the app has no clients")
    for name, key in keys.items():
        if len(key) < 16:
            raise RuntimeError(f"JOBS_API_KEYS: the key of {name!r} is shorter than 16 characters")
    return keys


bearer = HTTPBearer(auto_error=False, description="Your client's API key")


def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The calling client's name."""
    if credentials is not None:
        given = credentials.credentials.encode()
        for name, key in request.app.state.api_keys.items():
            if hmac.compare_digest(given, key):  # takes as long for a near miss as a far one
                return name
    raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


# An endpoint's parameter of this type is the name of the client that calls it.
Client = Annotated[str, Depends(authenticate)]
IdempotencyKey = Annotated[
    str | None,
    Header(min_length=1, max_length=200, description="The same key on a retry: the same job"),
]


def owner_tag(client: str) -> str:
    return f"client:{client}"


# --- Idempotency-Key: the job each key got ---------------------------------------------


class Submissions:
    """A row per (client, Idempotency-Key), claimed *before* the job is submitted, with the
    job's id chosen up front. A retry, a concurrent twin or a request after a crash between
    claim and submission all find the row, and so the same job id."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self.connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS submissions (client TEXT NOT NULL, key TEXT NOT NULL,"
                " body TEXT NOT NULL, job_id TEXT NOT NULL, PRIMARY KEY (client, key))"
            )

    def connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=10))

    def claim(self, client: str, key: str | None, document: Document) -> UUID:
        if key is None:
            return uuid4()  # nothing to remember: a retry without a key is a new job
        body = hashlib.sha256(document.model_dump_json().encode()).hexdigest()
        with self.connect() as db, db:
            row = (client, key, body, str(uuid4()))
            db.execute("INSERT OR IGNORE INTO submissions VALUES (?, ?, ?, ?)", row)
            job_id, claimed = db.execute(
                "SELECT job_id, body FROM submissions WHERE client = ? AND key = ?", (client, key)
            ).fetchone()
        if claimed != body:
            raise HTTPException(409, "this Idempotency-Key was used with another document")
        return UUID(job_id)


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.api_keys = load_api_keys()
    # Your app's own database in production; by default a file beside Prefect's local data.
    path = Path(os.environ.get("JOBS_DB") or get_current_settings().home / "jobs-api.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    app.state.submissions = Submissions(str(path))
    # One Prefect client for the app's lifetime: one pool of connections, not one per request.
    async with get_client() as prefect:
        app.state.prefect = prefect
        yield


app = FastAPI(
    title="Document scoring", description="Score documents in the background.", lifespan=lifespan
)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@contextmanager
def prefect_or_503() -> Iterator[None]:
    """Bound every call to Prefect; if it fails or is too slow, the client retries later."""
    try:
        with anyio.fail_after(PREFECT_TIMEOUT):  # cancels Prefect's own retries, too
            yield
    except (TimeoutError, OSError, httpx.HTTPError) as exc:
        logger.warning("Prefect unavailable: %r", exc)  # the details stay in our logs
        raise HTTPException(
            503, "the job service is unavailable, retry later", headers={"Retry-After": RETRY_AFTER}
        ) from None


# region submit
async def submit(prefect: PrefectClient, job_id: UUID, document: Document, client: str) -> None:
    with tags(JOB_TAG, owner_tag(client)):
        try:
            # What .delay() does, awaited on the app's one client, with an id of our choosing.
            await score_document.create_run(
                client=prefect, id=job_id, parameters={"document": document}, deferred=True
            )
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise  # 409: a concurrent request with the same key created this run first


@app.post("/jobs", status_code=202, responses=POST_ANSWERS)
async def create_job(
    document: Document,  # validated before this code runs: a bad body is a 422
    request: Request,
    response: Response,
    client: Client,  # the caller's name, from its API key (or a 401)
    idempotency_key: IdempotencyKey = None,
) -> Job:
    prefect, submissions = request.app.state.prefect, request.app.state.submissions
    # The job id this key got the first time, or a new one, recorded before we submit.
    job_id = await run_in_threadpool(submissions.claim, client, idempotency_key, document)
    with prefect_or_503():  # at most 5 s, then 503 + Retry-After
        run = idempotency_key and await read_own_run(prefect, job_id, client)
        if run:
            job = await describe(prefect, run)  # a retry: the job as it is now
        else:
            await submit(prefect, job_id, document, client)
            job = Job(id=job_id, status="queued")
    response.headers["Location"] = f"/jobs/{job_id}"
    return job
    # endregion submit


# region read
@app.get("/jobs/{job_id}", responses=GET_ANSWERS)
async def read_job(job_id: UUID, request: Request, client: Client) -> Job:
    with prefect_or_503():
        run = await read_own_run(request.app.state.prefect, job_id, client)
        if run is None:
            raise HTTPException(status_code=404, detail="job not found")
        return await describe(request.app.state.prefect, run)


async def read_own_run(prefect: PrefectClient, job_id: UUID, client: str) -> TaskRun | None:
    try:
        run = await prefect.read_task_run(job_id)
    except ObjectNotFound:
        return None
    # Another client's job, or a run this API did not submit: the same answer as unknown ids.
    if JOB_TAG not in run.tags or owner_tag(client) not in run.tags:
        return None
    return run
    # endregion read


# region cancel
@app.delete("/jobs/{job_id}", status_code=202, responses=DELETE_ANSWERS)
async def cancel_job(job_id: UUID, request: Request, client: Client) -> Job:
    """Ask the job to stop. It reads "cancelling" until the task server has stopped it at its
    next checkpoint ("cancelled"), or "completed" if it finished first."""
    prefect = request.app.state.prefect
    with prefect_or_503():
        if await read_own_run(prefect, job_id, client) is None:
            raise HTTPException(status_code=404, detail="job not found")
        # Prefect stops nothing: Cancelling is a request the task reads at its checkpoints.
        # Not forced, so Prefect refuses it for a run that has already ended.
        cancelling = Cancelling(message=f"cancelled by {client}")
        outcome = await prefect.set_task_run_state(job_id, cancelling)
        job = await describe(prefect, await prefect.read_task_run(job_id))
    if outcome.status != SetStateStatus.ACCEPT and job.status != "cancelled":
        raise HTTPException(status_code=409, detail=f"the job has already {job.status}")
    return job
    # endregion cancel


async def describe(prefect: PrefectClient, run: TaskRun) -> Job:
    # Read the state once and answer: never wait for the run here.
    state = run.state
    if state is None:
        # On SQLite the server records a new state in two writes; in between, the run
        # has none. The last state it has recorded is still the truth.
        recorded = await prefect.read_task_run_states(run.id)
        state = recorded[-1] if recorded else None

    if state and STATUS[state.type] in ("running", "cancelling"):
        state = await in_flight(prefect, run.id)
    job = Job(id=run.id, status=STATUS[state.type] if state else "queued")
    if state and state.name == "AwaitingRetry":
        job.status = "running"  # a retry happens in place, on the same task server
    if job.status == "completed":
        try:
            # Loads the result file the task server wrote: the app needs the same storage.
            job.result = DocumentScore.model_validate(await state.aresult())
        except Exception:
            logger.exception("job %s: its result cannot be read", run.id)
            job.error = "the job completed, but its result is no longer available"
    elif job.status == "failed":
        message = state.message or ""
        job.error = message if message.startswith(CLIENT_ERROR) else "the job failed"
    return job


async def in_flight(prefect: PrefectClient, run_id: UUID) -> State:
    """The state that tells how a run in flight stands. A run cancelled in the queue is still
    handed to a task server, which records Pending and Running over its Cancelling; a
    Cancelling before a retry still stops the next try (the task reads the whole history);
    and an end the task server reported just before our Cancelling can be recorded after it,
    in the run's history only."""
    states = await prefect.read_task_run_states(run_id)  # oldest first
    queued = [i for i, state in enumerate(states) if state.type == StateType.SCHEDULED]
    latest = states[queued[-1] if queued else 0 :]  # since it was last queued
    ended = [state for state in latest if state.is_final()]
    cancelling = [state for state in states if state.type == StateType.CANCELLING]
    return (ended or cancelling or latest)[-1]
