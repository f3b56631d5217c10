from prefect import flow, task

from submit import retry_no_state
from tasks import make_thumbnail
from thumbnails import sample_upload


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
