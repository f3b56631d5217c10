import asyncio

from prefect.task_worker import aserve

from tasks import resize_image

if __name__ == "__main__":
    # At most 3 runs at once in this process, each in a thread of its own.
    asyncio.run(aserve(resize_image, limit=3))
