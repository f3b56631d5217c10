import time

from prefect import flow, task

from tasks import make_thumbnail
from thumbnails import sample_upload


def retry_no_state(call, timeout: float, **kwargs):
    """Call future.wait or future.result, again while the run reads as having no state."""
    # On SQLite, Prefect 3.9 can show a run for a moment with no state, and result() then
    # raises RuntimeError("... has no state ...") at once. Step 02 explains it.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(timeout=max(deadline - time.monotonic(), 0.1), **kwargs)
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@task
def contact_sheet(thumbnails: list[dict]) -> str:
    return ", ".join(f"{t['name']} {t['sha256'][:8]}" for t in thumbnails)


@flow
def album(count: int) -> str:
    # A group: one background run per upload, each run on a task server.
    futures = [
        make_thumbnail.delay(f"photo-{n}.pgm", sample_upload(seed=n)) for n in range(1, count + 1)
    ]
    # A chord: once they are all done, one more task gets every result.
    return contact_sheet([retry_no_state(future.result, timeout=60) for future in futures])


if __name__ == "__main__":
    print(f"album: {album(count=3)}")
