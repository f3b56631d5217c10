import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import DateTime, ForeignKey, String, UniqueConstraint, create_engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The app AND the task server read this: both must reach the same database.
DATABASE_URL = os.environ.get("SIGNUP_DATABASE_URL", "sqlite:///.prefect/signup_app.db")

url = make_url(DATABASE_URL)
is_sqlite = url.get_backend_name() == "sqlite"
if is_sqlite and url.database:
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
# SQLite allows one writer at a time: wait for the lock instead of failing at once.
engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # Stored lower-cased, so the unique constraint ignores case: Ada@x.com == ada@x.com.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    # A hash of the secret that lets the person read their account: a copy of the
    # database gives no one a working token.
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=lambda: datetime.now(UTC))


class Job(Base):
    """One background task of a user. Written in the same transaction as the user, so it
    cannot be forgotten; task_run_id stays NULL until the task is queued (the outbox)."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("user_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(40))
    task_run_id: Mapped[uuid.UUID | None]
    # Set while a dispatcher queues the job, so that no other one queues it meanwhile.
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # One workspace per user, enforced by the database: a retried task cannot make two.
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), unique=True)
    name: Mapped[str] = mapped_column(String(120))
