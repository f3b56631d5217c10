"""The benchmark's jobs as arq functions. Worker: `arq benchmarks.arq_jobs.WorkerSettings`."""

import asyncio
import os
import time

from arq.connections import RedisSettings

from tasks import Document, score_document

REDIS = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
CONCURRENCY = int(os.environ.get("WORKER_CONCURRENCY", "10"))


async def noop(ctx: dict, index: int) -> float:
    return time.time()


async def pause(ctx: dict, index: int) -> float:
    started = time.time()
    await asyncio.sleep(0.05)  # arq jobs are coroutines: wait without blocking the loop
    return started


async def score(ctx: dict, document: dict) -> dict:
    # Step 08's job is blocking code (time.sleep): run it in a thread, off the event loop.
    return await asyncio.to_thread(score_document.fn, Document.model_validate(document))


class WorkerSettings:
    functions = (noop, pause, score)
    redis_settings = REDIS
    max_jobs = CONCURRENCY
