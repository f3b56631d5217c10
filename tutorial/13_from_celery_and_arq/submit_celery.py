from celery_app import make_thumbnail
from thumbnails import describe, sample_upload

if __name__ == "__main__":
    uploads = {f"photo-{n}.pgm": sample_upload(seed=n) for n in range(1, 9)}
    jobs = [make_thumbnail.delay(name, upload_b64) for name, upload_b64 in uploads.items()]
    for job in jobs:
        print(describe(job.get(timeout=60)))  # bound the wait, as always
