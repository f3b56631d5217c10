"""The job as a Celery task. Worker: `celery -A celery_app worker -c 4` (see the lesson)."""

import os

from celery import Celery

from thumbnails import create_thumbnail

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# Redis is both the broker (the queue) and the result backend (where results wait).
app = Celery("thumbnails", broker=REDIS_URL, backend=REDIS_URL)
# Acknowledge a message after the task ran, not before: a worker that dies mid-job leaves
# it to be delivered again (once Redis's visibility timeout, an hour by default, has passed).
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1


@app.task(
    bind=True,
    autoretry_for=(ConnectionError,),
    max_retries=3,
    retry_backoff=1,  # wait 1, 2, 4 s between attempts ...
    retry_jitter=True,  # ... each a random fraction of that
    time_limit=30,
)
def make_thumbnail(self, name: str, upload_b64: str) -> dict:
    # request.retries counts the retries so far: 0 on the first attempt.
    return create_thumbnail(name, upload_b64, attempt=self.request.retries + 1)
