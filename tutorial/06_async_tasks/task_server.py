import asyncio

from prefect.task_worker import aserve

from tasks import fetch_report

if __name__ == "__main__":
    # Async runs are coroutines on one event loop, not threads: a high limit is cheap.
    asyncio.run(aserve(fetch_report, limit=100))
