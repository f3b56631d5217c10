import asyncio

from prefect.task_worker import aserve

from tasks import resize_image

if __name__ == "__main__":
    # A smaller machine: at most 2 runs at once.
    asyncio.run(aserve(resize_image, limit=2))
