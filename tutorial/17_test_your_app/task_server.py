import asyncio

from prefect.task_worker import aserve

from tasks import score_document

if __name__ == "__main__":
    # The tests start this once per session, against their own Prefect server.
    # On a loop of its own, not serve(), which can freeze for good (../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(score_document))
