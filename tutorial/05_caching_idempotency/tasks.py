import hashlib
import time
from datetime import timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CacheKeyFnPolicy
from prefect.settings import get_current_settings

from locks import AtomicFileLockManager

HOME = Path(get_current_settings().home).expanduser()  # .prefect/ in this repo
# One line per task body that really ran: the proof that a Cached run did no work.
WORK_LOG = HOME / "work_log.txt"


def log_work(line: str) -> None:
    with WORK_LOG.open("a") as work_log:
        work_log.write(line + "\n")


# Same inputs and same code within 10 minutes: reuse the stored result.
@task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(minutes=10))
def build_report(day: str) -> str:
    time.sleep(1)  # stands in for a slow query
    log_work(f"built the report for {day}")
    return f"report for {day}: 42 orders"


def welcome_email_key(context, parameters) -> str:
    # Names the side effect, not the call: "Ada" and "Ada Lovelace" at one address share
    # it. Hashed, because the key becomes a file name in result storage.
    address = parameters["address"].strip().lower()
    return "welcome-email-" + hashlib.sha256(address.encode()).hexdigest()


# SERIALIZABLE: a run holds a lock on its key while it runs, so an identical run that
# starts meanwhile waits, then finds the record and ends Cached instead of sending again.
# File locks work for task servers on one machine (locks.py: why not Prefect's own class).
ONCE_PER_ADDRESS = CacheKeyFnPolicy(cache_key_fn=welcome_email_key).configure(
    isolation_level="SERIALIZABLE",
    lock_manager=AtomicFileLockManager(lock_files_directory=HOME / "locks"),
)


@task(cache_policy=ONCE_PER_ADDRESS)
def send_welcome_email(address: str, name: str) -> str:
    time.sleep(3)  # stands in for a slow mail server
    log_work(f"sent a welcome email to {address}")
    return f"welcome email sent to {name} <{address}>"


# No cache policy: every run does the work, even with identical arguments.
@task
def count_visit(page: str) -> str:
    log_work(f"counted a visit to {page}")
    return f"visit to {page} counted"
