"""This release's tasks.py: the thumbnail now goes to a folder per size. Any change to the
function gives it a new task key, so the previous release's runs wait for its task servers."""

import time

from prefect import task


@task
def make_thumbnail(name: str, size: int = 256) -> str:
    time.sleep(1)  # stands in for resizing an image
    return f"thumbnails/{size}/{name}"
