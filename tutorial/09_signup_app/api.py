import hashlib
import hmac
import logging
import secrets
import threading
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import httpx
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.objects import StateType, TaskRun
from pydantic import BaseModel, EmailStr, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import Base, Job, User, engine
from fake_providers import router as fake_providers
from tasks import add_to_crm, send_welcome_email, set_up_workspace

logger = logging.getLogger("signup")

# Every signup fans out to these independent tasks.
TASKS = {"welcome_email": send_welcome_email, "workspace": set_up_workspace, "crm": add_to_crm}

JobStatus = Literal["not_queued", "queued", "running", "completed", "failed", "cancelled"]
STATUS: dict[StateType, JobStatus] = {  # as in step 08: clients never see Prefect's names
    StateType.SCHEDULED: "queued",
    StateType.PENDING: "running",
    StateType.RUNNING: "running",
    StateType.PAUSED: "running",
    StateType.COMPLETED: "completed",
    StateType.FAILED: "failed",
    StateType.CRASHED: "failed",
    StateType.CANCELLING: "cancelled",
    StateType.CANCELLED: "cancelled",
}


class Signup(BaseModel):
    email: EmailStr
    name: str = Field(min_length=1, max_length=100)


class JobView(BaseModel):
    kind: str
    status: JobStatus
    attempts: int = 0


class UserView(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    jobs: list[JobView]


class NewUserView(UserView):
    token: str  # shown once: send it as "Authorization: Bearer <token>" to read the user


SIGNUP_ANSWERS = {
    400: {"description": "The body cannot be parsed"},
    409: {"description": "Email already in use"},
}
READ_ANSWERS = {
    404: {"description": "No such user, or not the token it was created with"},
    503: {"description": "The job states cannot be read now; retry later"},
}


# How long a dispatcher owns a job it is queuing. Longer than .delay() can take (Prefect's
# client tries a request up to 6 times, with a 60 s timeout each), so that no other
# dispatcher queues the job meanwhile; if this one dies, its claim runs out and another
# dispatcher queues the job.
CLAIM = timedelta(minutes=10)
SWEEP_SECONDS = 30  # also look without being woken: jobs other app processes left behind


def queueable(now: datetime):
    return Job.task_run_id.is_(None) & (Job.claimed_until.is_(None) | (Job.claimed_until < now))


def claim_a_job() -> tuple[int, str, uuid.UUID] | None:
    """Claim the oldest job nobody has queued or is queuing: (id, kind, user id), or None."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        candidates = select(Job.id, Job.kind, Job.user_id).where(queueable(now)).order_by(Job.id)
        for job_id, kind, user_id in session.execute(candidates.limit(20)).all():
            # Of two dispatchers that try at once, the database lets one UPDATE match.
            claim = update(Job).where(Job.id == job_id, queueable(now))
            claimed = session.execute(claim.values(claimed_until=now + CLAIM)).rowcount
            session.commit()
            if claimed:
                return job_id, kind, user_id
    return None


# region outbox
def queue_jobs(stopping: threading.Event) -> None:
    """Queue the jobs not queued yet, one at a time, recording each task run id."""
    while not stopping.is_set() and (job := claim_a_job()):
        job_id, kind, user_id = job
        try:
            # Only the id goes to the queue; the task reads the user from the database.
            run_id = TASKS[kind].delay(user_id).task_run_id
        except Exception:
            with Session(engine) as session:  # let the next pass try again at once
                session.execute(update(Job).where(Job.id == job_id).values(claimed_until=None))
                session.commit()
            raise
        with Session(engine) as session:
            done = {"task_run_id": run_id, "claimed_until": None}
            session.execute(update(Job).where(Job.id == job_id).values(**done))
            session.commit()
    # endregion outbox


class Dispatcher:
    """One thread per app process that hands the committed jobs to Prefect, so that no
    request ever waits for the Prefect server."""

    def __init__(self) -> None:
        self.wake_up = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="dispatcher", daemon=True)

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            self.wake_up.clear()  # a signup committed from now on wakes the next pass
            try:
                queue_jobs(self.stopping)
            except Exception:  # the Prefect server is unreachable: try again later
                logger.exception("Could not queue jobs; next try in %.0f s", backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 60)
                continue
            backoff = 1.0
            self.wake_up.wait(SWEEP_SECONDS)

    def stop(self) -> None:
        self.stopping.set()
        self.wake_up.set()
        # A .delay() under way finishes first, unless Prefect hangs: then the thread dies
        # with the process and its claim runs out.
        self.thread.join(timeout=10)


dispatcher = Dispatcher()


@asynccontextmanager
async def lifespan(app: FastAPI):
    Base.metadata.create_all(engine)
    # Its first pass also queues the jobs left from before: the app died after a commit,
    # or the Prefect server was unreachable. The tasks are idempotent, so a second run
    # (the app died between .delay() and recording the run id) is harmless.
    dispatcher.thread.start()
    yield
    await run_in_threadpool(dispatcher.stop)


app = FastAPI(title="Signup", lifespan=lifespan)
app.include_router(fake_providers)
bearer = HTTPBearer(auto_error=False)


def hash_token(token: str) -> str:
    # A random 256-bit token needs no slow password hash: SHA-256 cannot be guessed back.
    return hashlib.sha256(token.encode()).hexdigest()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(Path(__file__).parent / "static" / "index.html")


# Plain `def`: FastAPI runs these in its threadpool, so the blocking database calls and
# Prefect's client never block the event loop.
# region sign_up
@app.post("/users", status_code=201, responses=SIGNUP_ANSWERS)
def sign_up(signup: Signup, response: Response) -> NewUserView:
    # Commit the user and its jobs first: a task must never look for a user not yet saved.
    user_id, email, token = uuid.uuid4(), signup.email.lower(), secrets.token_urlsafe(32)
    with Session(engine) as session:
        session.add(User(id=user_id, email=email, name=signup.name, token_hash=hash_token(token)))
        session.add_all(Job(user_id=user_id, kind=kind) for kind in TASKS)
        try:
            session.commit()
        except IntegrityError:  # the email's unique constraint: nothing was written
            raise HTTPException(409, "an account with this email already exists") from None
    # Then fan out, outside the request: the dispatcher queues the jobs just committed.
    dispatcher.wake_up.set()
    response.headers["Location"] = f"/users/{user_id}"
    jobs = [JobView(kind=kind, status="not_queued") for kind in TASKS]
    return NewUserView(id=user_id, email=email, name=signup.name, jobs=jobs, token=token)
    # endregion sign_up


def read_runs(run_ids: list[uuid.UUID]) -> dict[uuid.UUID, TaskRun]:
    """The task runs with these ids, or a 503 when the Prefect server cannot be reached."""
    if not run_ids:
        return {}
    only_these = TaskRunFilter(id=TaskRunFilterId(any_=run_ids))
    try:
        with get_client(sync_client=True) as client:
            return {run.id: run for run in client.read_task_runs(task_run_filter=only_these)}
    except httpx.HTTPError:  # the Prefect server is down: say so, without the details
        raise HTTPException(503, "job states unavailable", {"Retry-After": "5"}) from None


def job_view(job: Job, run: TaskRun | None) -> JobView:
    if run is None:
        return JobView(kind=job.kind, status="not_queued")
    # state_type, not state.type: on SQLite a run has no state for a moment while the
    # server records a new one, but state_type already names the new one.
    status = STATUS[run.state_type] if run.state_type else "queued"
    if run.state_name == "AwaitingRetry":
        status = "running"  # a retry happens in place, on the same task server
    return JobView(kind=job.kind, status=status, attempts=run.run_count)


# region read
@app.get("/users/{user_id}", responses=READ_ANSWERS)
def read_user(
    user_id: uuid.UUID,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> UserView:
    with Session(engine) as session:
        user = session.get(User, user_id)
        # A wrong or missing token answers like an unknown id: nobody learns who signed up.
        token = credentials.credentials if credentials else ""
        if user is None or not hmac.compare_digest(hash_token(token), user.token_hash):
            raise HTTPException(404, "user not found")
        jobs = session.scalars(select(Job).where(Job.user_id == user_id).order_by(Job.id)).all()
    # Only this user's runs, by the ids we recorded: no way to read anyone else's.
    runs = read_runs([job.task_run_id for job in jobs if job.task_run_id])
    views = [job_view(job, runs.get(job.task_run_id)) for job in jobs]
    return UserView(id=user_id, email=user.email, name=user.name, jobs=views)
    # endregion read
