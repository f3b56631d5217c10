import os
import random
import sqlite3
import time
from pathlib import Path

from prefect import task

# Where the side effect lands: in your app, your own database.
LEDGER = Path(os.environ.get("LEDGER_DB", ".prefect/ledger.db"))
# How long the payment provider takes, in seconds; by default 0.1 to 0.5.
LATENCY = os.environ.get("PAYMENT_LATENCY")


def ledger() -> sqlite3.Connection:
    LEDGER.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(LEDGER, timeout=60)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS payments"
        " (order_id TEXT PRIMARY KEY, amount_cents INTEGER NOT NULL, pid INTEGER NOT NULL)"
    )
    # Every execution of the task, kept to show how often a job ran.
    db.execute("CREATE TABLE IF NOT EXISTS attempts (order_id TEXT NOT NULL, applied INTEGER)")
    return db


# region charge
@task
def charge_order(order_id: str, amount_cents: int) -> str:
    time.sleep(float(LATENCY) if LATENCY else random.uniform(0.1, 0.5))
    db = ledger()
    try:
        with db:  # one transaction
            # The order id is the idempotency key: when the job runs a second time, the
            # row is already there and nothing changes.
            applied = db.execute(
                "INSERT INTO payments (order_id, amount_cents, pid) VALUES (?, ?, ?)"
                " ON CONFLICT (order_id) DO NOTHING",
                (order_id, amount_cents, os.getpid()),
            ).rowcount
            db.execute(
                "INSERT INTO attempts (order_id, applied) VALUES (?, ?)", (order_id, applied)
            )
    finally:
        db.close()
    return f"{order_id}: {'charged' if applied else 'already charged'}"
    # endregion charge
