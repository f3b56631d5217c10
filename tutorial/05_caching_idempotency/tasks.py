import hashlib
import time
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy
from prefect.settings import get_current_settings

from locks import AtomicFileLockManager

LOCKS = Path(get_current_settings().home).expanduser() / "locks"  # .prefect/locks here


# Same arguments and same code within 10 minutes: reuse the stored result.
@task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(minutes=10), log_prints=True)
def build_report(day: str) -> str:
    print(f"building the report for {day}")
    time.sleep(1)  # stands in for a slow query
    return f"report for {day}: 42 orders"


def welcome_email_key(context, parameters) -> str:
    # Names the side effect, not the call: one email per address, whatever the name, and
    # no code hash or expiration (a new deploy must not email everybody again). Hashed,
    # because the key becomes a file name in result storage.
    address = parameters["address"].strip().lower()
    return "welcome-email-" + hashlib.sha256(address.encode()).hexdigest()


# A cache is checked when a run starts and written when it ends: two overlapping runs would
# both send. SERIALIZABLE holds a lock on the key while a run runs, so an identical run waits,
# then finds the record and ends Cached. File locks serve task servers on one machine.
ONCE_PER_ADDRESS = CacheKeyFnPolicy(cache_key_fn=welcome_email_key).configure(
    isolation_level="SERIALIZABLE",
    lock_manager=AtomicFileLockManager(lock_files_directory=LOCKS),
)


@task(cache_policy=ONCE_PER_ADDRESS, log_prints=True)
def send_welcome_email(address: str, name: str) -> str:
    print(f"sending a welcome email to {address}")
    time.sleep(3)  # stands in for a slow mail server
    return f"welcome email sent to {name} <{address}>"
