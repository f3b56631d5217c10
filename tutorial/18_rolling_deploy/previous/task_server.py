import asyncio

from prefect.task_worker import aserve

from tasks import make_thumbnail

if __name__ == "__main__":
    # On a loop of its own: serve() can freeze for good (../../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(make_thumbnail, limit=2))
