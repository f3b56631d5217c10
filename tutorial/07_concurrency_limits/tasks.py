import asyncio

from prefect import get_run_logger, task
from prefect.concurrency.asyncio import concurrency, rate_limit

# Limits live in the Prefect server, so they hold across every task server and machine.
INVENTORY_LIMIT = "inventory-service"  # at most 3 calls in flight
SMS_RATE_LIMIT = "sms-provider"  # 2 at once, then 1 new message a second


@task
async def check_stock(sku: str) -> str:
    # The run's own logger: print() with log_prints loses lines when runs overlap (notes).
    log = get_run_logger()
    # strict=True: fail if the limit does not exist, instead of running unlimited.
    async with concurrency(INVENTORY_LIMIT, strict=True):
        log.info(f"checking stock of {sku}")
        await asyncio.sleep(2)  # stands in for a slow call to the inventory service
        log.info(f"checked stock of {sku}")
    return f"{sku}: 12 in stock"


@task
async def send_sms(number: str) -> str:
    # Takes a slot and never gives it back: the server frees slots at a fixed rate.
    await rate_limit(SMS_RATE_LIMIT, strict=True)
    get_run_logger().info(f"sending a text to {number}")
    await asyncio.sleep(0.1)  # stands in for the call to the SMS provider
    return f"text sent to {number}"
