from prefect import flow, task

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

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
    return contact_sheet([result_of(future, timeout=60) for future in futures])


if __name__ == "__main__":
    print(f"album: {album(count=3)}")
