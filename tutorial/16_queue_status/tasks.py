import time

from prefect import task


@task(timeout_seconds=30)
def make_thumbnail(name: str) -> str:
    time.sleep(1)  # stands in for resizing an image
    return f"thumbnails/{name}"
