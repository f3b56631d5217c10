import asyncio
import time

from prefect import task
from prefect.concurrency.asyncio import concurrency, rate_limit

# Limits live in the Prefect server, so they hold across every task server and machine.
INVENTORY_LIMIT = "inventory-service"  # at most 3 calls in flight
SMS_RATE_LIMIT = "sms-provider"  # 2 at once, then 1 new message a second


@task
async def check_stock(sku: str) -> dict:
    # Waits for a free slot, holds it while the block runs, gives it back at the end.
    # strict=True: fail if the limit does not exist, instead of running unlimited.
    async with concurrency(INVENTORY_LIMIT, strict=True):
        started = time.time()
        await asyncio.sleep(2)  # stands in for a slow call to the inventory service
        ended = time.time()
    return {"sku": sku, "started": started, "ended": ended}


@task
async def send_sms(number: str) -> dict:
    # Takes a slot and never gives it back: the server frees slots at a fixed rate.
    await rate_limit(SMS_RATE_LIMIT, strict=True)
    started = time.time()
    await asyncio.sleep(0.1)  # stands in for the call to the SMS provider
    return {"number": number, "started": started}
