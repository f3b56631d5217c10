import asyncio
import statistics
import time

from arq import create_pool

from arq_app import REDIS
from thumbnails import sample_upload


async def main() -> None:
    uploads = {f"photo-{n}.pgm": sample_upload(seed=n) for n in range(1, 9)}
    redis = await create_pool(REDIS)

    submitted, latencies = [], []
    for name, upload_b64 in uploads.items():
        started = time.perf_counter()
        submitted.append(await redis.enqueue_job("make_thumbnail", name, upload_b64))
        latencies.append(time.perf_counter() - started)

    for job in submitted:
        thumbnail = await job.result(timeout=60)  # bound the wait, as always
        print(
            f"{thumbnail['name']}: {thumbnail['size']}, sha256 {thumbnail['sha256'][:16]},"
            f" {thumbnail['stored_at']}, attempt {thumbnail['attempt']}"
        )
    p50 = statistics.median(latencies) * 1000
    print(f"arq: {len(submitted)} submitted, submit p50 {p50:.2f} ms")
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
