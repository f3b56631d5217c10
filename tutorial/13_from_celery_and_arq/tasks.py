from prefect import task
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from thumbnails import create_thumbnail


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),  # wait 1, 2, 4 s ...
    retry_jitter_factor=0.5,  # ... each randomised around that, at most 50 % longer
    timeout_seconds=30,
)
def make_thumbnail(name: str, upload_b64: str) -> dict:
    # run_count counts the attempts: 1 on the first.
    return create_thumbnail(name, upload_b64, attempt=task_run.run_count)
