"""Stand-ins for the outside services a signup talks to: a mail provider's HTTP API and a
CRM's. They are mounted in the app so the step runs on a laptop; in production these are
other companies' servers, and the tasks would call them the same way."""

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from pydantic import BaseModel, EmailStr

# Not part of the app's API: kept out of its OpenAPI schema.
router = APIRouter(include_in_schema=False)

messages: dict[str, dict] = {}  # the mail provider's outbox, by Idempotency-Key
contacts: dict[str, dict] = {}  # the CRM's contacts, by email


class Message(BaseModel):
    to: EmailStr
    subject: str
    text: str


@router.post("/fake-mail/messages", status_code=202)
async def send_message(message: Message, idempotency_key: Annotated[str, Header()]) -> dict:
    # Like real providers, a key it has seen returns the first message instead of a new one.
    if idempotency_key in messages:
        messages[idempotency_key]["requests"] += 1
        return messages[idempotency_key]
    messages[idempotency_key] = {"id": str(uuid.uuid4()), **message.model_dump(), "requests": 1}
    # Deliberately unreliable, the same way every time: the message is accepted and will be
    # delivered, but the first answer for each key is lost, as in a gateway timeout.
    raise HTTPException(status_code=504, detail="gateway timeout")


@router.get("/fake-mail/messages")
async def list_messages(to: str) -> list[dict]:
    return [m for m in messages.values() if m["to"].lower() == to.lower()]


class Contact(BaseModel):
    name: str
    lifecycle_stage: str


# `:path` lets the key hold a "/", which an email address may contain.
@router.put("/fake-crm/contacts/{email:path}")
async def upsert_contact(email: str, contact: Contact) -> dict:
    await asyncio.sleep(3)  # a slow third-party API
    # PUT to the contact's natural key: calling it twice leaves one contact.
    contacts[email.lower()] = {"email": email.lower(), **contact.model_dump()}
    return contacts[email.lower()]


@router.get("/fake-crm/contacts/{email:path}")
async def read_contact(email: str) -> dict:
    if email.lower() not in contacts:
        raise HTTPException(status_code=404, detail="no such contact")
    return contacts[email.lower()]
