import logging
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.objects import StateType
from pydantic import BaseModel, EmailStr, Field
from sqlalchemy import select
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


def enqueue(user_id: uuid.UUID | None = None) -> None:
    """Queue the jobs not queued yet (all of them, or one user's), recording each run id."""
    with Session(engine) as session:
        query = select(Job).where(Job.task_run_id.is_(None)).order_by(Job.id)
        if user_id is not None:
            query = query.where(Job.user_id == user_id)
        for job in session.scalars(query).all():
            try:
                # Only the id goes to the queue; the task reads the user from the database.
                job.task_run_id = TASKS[job.kind].delay(job.user_id).task_run_id
            except Exception:  # the Prefect server is unreachable: leave the rest for later
                logger.exception("Could not queue the %s job of user %s", job.kind, job.user_id)
                return
            session.commit()


@asynccontextmanager
async def lifespan(app: FastAPI):
    Base.metadata.create_all(engine)
    # Jobs committed with their user but never queued (the app died, or the Prefect server
    # was unreachable): queue them now. The tasks are idempotent, so a second run is harmless.
    await run_in_threadpool(enqueue)
    yield


app = FastAPI(title="Signup", lifespan=lifespan)
app.include_router(fake_providers)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(Path(__file__).parent / "static" / "index.html")


# Plain `def`: FastAPI runs these in its threadpool, so the blocking database calls and
# .delay() never block the event loop.
@app.post("/users", status_code=201, responses={409: {"description": "Email already in use"}})
def sign_up(signup: Signup, response: Response) -> UserView:
    # 1. Commit the user and its jobs first: a task must never look for a user not yet saved.
    user_id = uuid.uuid4()
    with Session(engine) as session:
        session.add(User(id=user_id, email=signup.email.lower(), name=signup.name))
        session.add_all(Job(user_id=user_id, kind=kind) for kind in TASKS)
        try:
            session.commit()
        except IntegrityError:  # the email's unique constraint: nothing was written
            raise HTTPException(409, "an account with this email already exists") from None
    # 2. Then queue the tasks. If that fails, the account exists anyway and its jobs stay
    # not_queued until the app's next start queues them.
    enqueue(user_id)
    response.headers["Location"] = f"/users/{user_id}"
    return read_user(user_id)


@app.get("/users/{user_id}", responses={404: {"description": "No such user"}})
def read_user(user_id: uuid.UUID) -> UserView:
    with Session(engine) as session:
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(404, "user not found")
        jobs = session.scalars(select(Job).where(Job.user_id == user_id).order_by(Job.id)).all()
    # Only this user's runs, by the ids we recorded: no way to read anyone else's.
    run_ids = [job.task_run_id for job in jobs if job.task_run_id]
    runs = {}
    if run_ids:
        only_ours = TaskRunFilter(id=TaskRunFilterId(any_=run_ids))
        with get_client(sync_client=True) as client:
            runs = {run.id: run for run in client.read_task_runs(task_run_filter=only_ours)}
    views = []
    for job in jobs:
        run = runs.get(job.task_run_id)
        if run is None:
            views.append(JobView(kind=job.kind, status="not_queued"))
        else:
            # state_type, not state.type: on SQLite a run has no state for a moment while
            # the server records a new one, but state_type already names the new one.
            status = STATUS[run.state_type] if run.state_type else "queued"
            if run.state_name == "AwaitingRetry":
                status = "running"  # a retry happens in place, on the same task server
            views.append(JobView(kind=job.kind, status=status, attempts=run.run_count))
    return UserView(id=user_id, email=user.email, name=user.name, jobs=views)
