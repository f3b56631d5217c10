"""The benchmark's jobs as Celery tasks. Worker: `celery -A benchmarks.celery_jobs worker`."""

import os
import time

from celery import Celery

from tasks import Document, score_document

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("benchmarks", broker=REDIS_URL, backend=REDIS_URL)


@app.task
def noop(index: int) -> float:
    return time.time()


@app.task
def pause(index: int) -> float:
    started = time.time()
    time.sleep(0.05)
    return started


@app.task
def score(document: dict) -> dict:
    # Step 08's job, the same code its Prefect task runs (.fn is the plain function).
    return score_document.fn(Document.model_validate(document))


JOBS = {"noop": noop, "pause": pause}
