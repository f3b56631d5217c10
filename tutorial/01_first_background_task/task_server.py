import asyncio

from prefect.task_worker import aserve

from tasks import send_welcome_email

if __name__ == "__main__":
    # Runs until stopped. Not serve(), which can freeze for good (../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(send_welcome_email))
