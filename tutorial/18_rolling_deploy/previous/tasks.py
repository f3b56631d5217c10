"""The previous release's tasks.py, as its task servers still run it."""

import time

from prefect import task


@task
def make_thumbnail(name: str) -> str:
    time.sleep(1)  # stands in for resizing an image
    return f"thumbnails/{name}"
