"""Drive a jobs API the way step 08's clients do: many clients POST /jobs at once while one
more keeps asking /health; then poll GET /jobs/{id} until every job is final."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import httpx

from benchmarks.measure import percentile

DOCUMENT = {
    "title": "Release notes",
    "text": "The new version is faster. It starts in half the time and uses less memory.",
}
FINAL = {"completed", "failed", "cancelled"}
# The one client step 08's app knows (its JOBS_API_KEYS); the other apps ignore the header.
API_KEY = secrets.token_urlsafe(24)


async def drive(
    base_url: str, clients: int, per_client: int, timeout: float, health_every: float = 0.02
) -> dict:
    post_ms: list[float] = []
    health_ms: list[float] = []
    job_ids: list[str] = []
    errors: list[str] = []
    retries = 0  # POSTs sent again (a 503, or no answer), with the same Idempotency-Key
    posting = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 2)

    # A generous timeout: a slow POST /jobs is measured, not cut off (a client that gave up
    # would not learn the job's id, and the job could not be counted).
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=auth, timeout=300, limits=limits
    ) as http:

        async def client() -> None:
            nonlocal retries
            for _ in range(per_client):
                started = time.perf_counter()
                # A 503 is retried as step 08's clients do, and so is a request that got no
                # answer (the app may close a connection kept idle that long), with the same
                # Idempotency-Key. The time until the job is accepted is measured, waits included.
                headers = {"Idempotency-Key": str(uuid.uuid4())}
                response = None
                for attempt in range(20):
                    retries += attempt > 0
                    try:
                        response = await http.post("/jobs", json=DOCUMENT, headers=headers)
                    except httpx.TransportError as exc:
                        response = None
                        error = f"POST /jobs: {exc!r}"
                        continue
                    if response.status_code != 503:
                        break
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                if response is None:
                    errors.append(error)
                    continue
                post_ms.append((time.perf_counter() - started) * 1000)
                if response.status_code == 202:
                    job_ids.append(str(response.json()["id"]))
                else:
                    errors.append(f"POST /jobs -> {response.status_code}: {response.text[:200]}")

        async def health() -> None:
            while not posting.is_set():
                started = time.perf_counter()
                try:
                    response = await http.get("/health")
                    if response.status_code == 200:
                        health_ms.append((time.perf_counter() - started) * 1000)
                except httpx.HTTPError as exc:
                    errors.append(f"GET /health: {exc!r}")
                await asyncio.sleep(health_every)

        prober = asyncio.create_task(health())
        load_started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        load_seconds = time.perf_counter() - load_started
        posting.set()
        await prober

        # Every job must finish: poll each one until it is final, within the deadline.
        statuses: dict[str, str] = {}
        pending = list(job_ids)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                try:
                    status = (await http.get(f"/jobs/{job_id}")).json()["status"]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    status = f"unreadable: {exc!r}"
                statuses[job_id] = status
                if status in FINAL:
                    pending.remove(job_id)
            if pending:
                await asyncio.sleep(0.5)

    completed = sum(status == "completed" for status in statuses.values())
    not_done = [f"{job_id}: {statuses.get(job_id, 'never read')}" for job_id in pending]
    failed = [f"{i}: {s}" for i, s in statuses.items() if s in FINAL and s != "completed"]
    return {
        "clients": clients,
        "requests": clients * per_client,
        "accepted": len(job_ids),
        "completed": completed,
        "post_ms_p50": _round(percentile(post_ms, 50)),
        "post_ms_p99": _round(percentile(post_ms, 99)),
        "post_ms_max": _round(max(post_ms, default=None)),
        "posts_per_s": round(len(post_ms) / load_seconds, 1),
        "post_retries": retries,
        "health_requests": len(health_ms),
        "health_ms_p50": _round(percentile(health_ms, 50)),
        "health_ms_p99": _round(percentile(health_ms, 99)),
        "errors": (errors + failed + not_done)[:5],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
