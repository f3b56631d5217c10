import asyncio

from prefect.task_worker import aserve

from tasks import build_report, send_welcome_email

if __name__ == "__main__":
    asyncio.run(aserve(build_report, send_welcome_email))
