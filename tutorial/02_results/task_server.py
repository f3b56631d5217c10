import asyncio

from prefect.task_worker import aserve

from tasks import build_invoice, charge_card

if __name__ == "__main__":
    asyncio.run(aserve(build_invoice, charge_card))
