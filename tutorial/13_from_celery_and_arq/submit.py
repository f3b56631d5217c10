from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from tasks import make_thumbnail
from thumbnails import describe, sample_upload

if __name__ == "__main__":
    uploads = {f"photo-{n}.pgm": sample_upload(seed=n) for n in range(1, 9)}
    futures = [make_thumbnail.delay(name, upload_b64) for name, upload_b64 in uploads.items()]
    for future in futures:
        print(describe(result_of(future, timeout=60)))  # bound the wait, as always
