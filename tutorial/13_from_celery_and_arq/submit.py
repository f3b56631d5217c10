import statistics
import time

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


if __name__ == "__main__":
    uploads = {f"photo-{n}.pgm": sample_upload(seed=n) for n in range(1, 9)}

    submitted, latencies = [], []
    for name, upload_b64 in uploads.items():
        started = time.perf_counter()
        submitted.append(make_thumbnail.delay(name, upload_b64))
        latencies.append(time.perf_counter() - started)

    for future in submitted:
        thumbnail = retry_no_state(future.result, timeout=60)  # bound the wait, as always
        print(
            f"{thumbnail['name']}: {thumbnail['size']}, sha256 {thumbnail['sha256'][:16]},"
            f" {thumbnail['stored_at']}, attempt {thumbnail['attempt']}"
        )
    p50 = statistics.median(latencies) * 1000
    print(f"prefect: {len(submitted)} submitted, submit p50 {p50:.2f} ms")
