"""The job as an arq function. Worker: `arq arq_app.WorkerSettings` (see the lesson)."""

import os
import random

from arq import Retry, func
from arq.connections import RedisSettings

from thumbnails import create_thumbnail

REDIS = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


async def make_thumbnail(ctx: dict, name: str, upload_b64: str) -> dict:
    # ctx["job_try"] counts the attempts: 1 on the first. The job is a few milliseconds of
    # CPU; longer blocking work would stall the worker's event loop and belongs in a thread.
    try:
        return create_thumbnail(name, upload_b64, attempt=ctx["job_try"])
    except ConnectionError as exc:
        # arq retries only when the job raises Retry; backoff and jitter are ours to compute.
        backoff = 2 ** (ctx["job_try"] - 1)  # 1, 2, 4 s ...
        raise Retry(defer=random.uniform(0, backoff)) from exc


class WorkerSettings:
    functions = (func(make_thumbnail, max_tries=4, timeout=30),)
    redis_settings = REDIS
    max_jobs = 4
