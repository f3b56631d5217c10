from prefect import get_client
from prefect.task_worker import serve

from tasks import INVENTORY_LIMIT, SMS_RATE_LIMIT, check_stock, send_sms

if __name__ == "__main__":
    # Create the limits, or update them to these values: safe to run on every start.
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(INVENTORY_LIMIT, limit=3)
        client.upsert_global_concurrency_limit_by_name(
            SMS_RATE_LIMIT, limit=2, slot_decay_per_second=1.0
        )

    # This server alone could run 10 at once; the global limits are what bind.
    serve(check_stock, send_sms, limit=10)
