import asyncio

from prefect.task_worker import aserve

from tasks import make_thumbnail

if __name__ == "__main__":
    # At most 4 runs at once in this process, like `celery worker -c 4` or arq's max_jobs = 4.
    # On a loop of its own, not serve(), which can freeze for good (../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(make_thumbnail, limit=4))
