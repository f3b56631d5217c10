import os
import time
import uuid
from urllib.parse import quote

import httpx
from prefect import task
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import User, Workspace, engine

# Where the app (and its fake mail and CRM providers) listens.
API_URL = os.environ.get("API_URL", "http://127.0.0.1:8000")


# Each task gets the user's id only and reads the user now: the row is the truth, and a
# run that waited in the queue must not act on a stale copy.
def load_user(user_id: uuid.UUID) -> User:
    with Session(engine) as session:
        return session.get_one(User, user_id)


# region email
@task(retries=3, retry_delay_seconds=1, log_prints=True)
def send_welcome_email(user_id: uuid.UUID) -> str:
    user = load_user(user_id)
    response = httpx.post(
        f"{API_URL}/fake-mail/messages",
        json={"to": user.email, "subject": "Welcome!", "text": f"Hi {user.name}, welcome!"},
        # The same key on every attempt: if an earlier attempt did send, the provider
        # answers with that message instead of sending a second one.
        headers={"Idempotency-Key": f"welcome-email-{user_id}"},
        timeout=10,
    )
    response.raise_for_status()  # a 5xx fails this attempt; Prefect retries it
    print(f"Welcome email to {user.email} accepted as message {response.json()['id']}")
    return response.json()["id"]
    # endregion email


@task(retries=3, retry_delay_seconds=1, log_prints=True)
def set_up_workspace(user_id: uuid.UUID) -> str:
    user = load_user(user_id)
    with Session(engine) as session:
        workspace = session.scalar(select(Workspace).where(Workspace.user_id == user_id))
        if workspace is None:  # not made by an earlier attempt or a duplicate run
            time.sleep(2)  # stands in for creating storage, named after the user id, ...
            workspace = Workspace(user_id=user_id, name=f"{user.name}'s workspace")
            session.add(workspace)
            session.commit()  # a concurrent duplicate fails here (unique user_id) and retries
        print(f"Workspace {workspace.name!r} is ready")
        return str(workspace.id)


@task(retries=3, retry_delay_seconds=1, log_prints=True)
def add_to_crm(user_id: uuid.UUID) -> str:
    user = load_user(user_id)
    # Quote the address for the URL path: "x?y@example.com" is a valid address, and
    # unquoted its "?" would start a query string, updating contact "x" instead.
    response = httpx.put(
        f"{API_URL}/fake-crm/contacts/{quote(user.email, safe='@')}",
        json={"name": user.name, "lifecycle_stage": "signed_up"},
        timeout=10,
    )
    response.raise_for_status()
    print(f"CRM contact {user.email} is up to date")
    return response.json()["email"]  # the contact the CRM updated
