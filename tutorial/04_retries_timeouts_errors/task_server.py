import asyncio

from prefect.task_worker import aserve

from tasks import render_invoice, send_receipt

if __name__ == "__main__":
    asyncio.run(aserve(send_receipt, render_invoice))
