import asyncio

from prefect import get_client
from prefect.exceptions import ObjectAlreadyExists
from prefect.task_worker import aserve

from tasks import INVENTORY_LIMIT, SMS_RATE_LIMIT, check_stock, send_sms

LIMITS = {
    INVENTORY_LIMIT: {"limit": 3},
    SMS_RATE_LIMIT: {"limit": 2, "slot_decay_per_second": 1.0},
}

if __name__ == "__main__":
    with get_client(sync_client=True) as client:
        for name, values in LIMITS.items():
            try:
                client.upsert_global_concurrency_limit_by_name(name, **values)
            except ObjectAlreadyExists:
                # Another task server created it between our read and create: update it.
                client.upsert_global_concurrency_limit_by_name(name, **values)

    # This server alone could run 10 at once; the global limits are what bind.
    asyncio.run(aserve(check_stock, send_sms, limit=10))
