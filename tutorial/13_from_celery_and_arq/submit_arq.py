import asyncio

from arq import create_pool

from arq_app import REDIS
from thumbnails import describe, sample_upload


async def main() -> None:
    uploads = {f"photo-{n}.pgm": sample_upload(seed=n) for n in range(1, 9)}
    redis = await create_pool(REDIS)
    jobs = [await redis.enqueue_job("make_thumbnail", name, b64) for name, b64 in uploads.items()]
    for job in jobs:
        print(describe(await job.result(timeout=60)))  # bound the wait, as always
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
