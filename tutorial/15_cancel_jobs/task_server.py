import asyncio

from prefect.task_worker import aserve

from tasks import score_document

if __name__ == "__main__":
    # One job at a time, so that a second job waits in the queue, where you can cancel it.
    # On a loop of its own, not serve(), which can freeze for good (../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(score_document, limit=1))
