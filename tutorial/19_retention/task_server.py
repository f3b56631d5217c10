import asyncio

from prefect.task_worker import aserve

from tasks import make_report

if __name__ == "__main__":
    # On a loop of its own, not serve(), which can freeze for good (../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(make_report))
