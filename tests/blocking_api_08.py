"""Step 08's app plus the mistake the lesson warns about: an `async def` endpoint that calls
`.delay()` directly, on the event loop. Served by tests/test_step_08.py to compare the two."""

import sys
from pathlib import Path

sys.path.insert(0, str(next(Path(__file__).parent.parent.glob("tutorial/08_*"))))

from api import Job, app
from prefect import tags

from tasks import Document, score_document


@app.post("/blocking-jobs", status_code=202)
async def create_job_on_the_event_loop(document: Document) -> Job:
    with tags("test:blocking"):
        future = score_document.delay(document)  # blocks every other request meanwhile
    return Job(id=future.task_run_id, status="queued")
