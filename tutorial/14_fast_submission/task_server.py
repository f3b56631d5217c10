import asyncio

from prefect.task_worker import aserve

from tasks import add_one

if __name__ == "__main__":
    # Start this file more than once to run the runs in several processes.
    # On a loop of its own, not serve(), which can freeze for good (../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(add_one))
