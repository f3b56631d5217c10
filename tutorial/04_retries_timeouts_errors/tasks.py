import asyncio

from prefect import task
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff


class AddressRejected(Exception):
    """The mail service refused the address: sending it again can never succeed."""


def retry_unless_rejected(task, task_run, state) -> bool:
    # Called after a failed attempt while retries remain (the state holds its exception).
    return not isinstance(state.result(raise_on_failure=False), AddressRejected)


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),  # 0.5 s, 1 s, 2 s
    retry_jitter_factor=0.5,  # each delay 0.63x to 1.5x the base: retries do not arrive in step
    retry_condition_fn=retry_unless_rejected,
    log_prints=True,
)
def send_receipt(address: str) -> str:
    attempt = task_run.run_count  # 1 for the first attempt, 2 for the first retry, ...
    print(f"attempt {attempt}: sending a receipt to {address}")
    if address.endswith(".invalid"):
        raise AddressRejected(f"550 no such mailbox: {address}")
    if attempt < 3:  # stands in for a mail server that drops the first two attempts
        raise ConnectionError("mail server unreachable")
    return f"receipt sent to {address} on attempt {attempt}"


# async def: on a task server, a timeout can interrupt an await but not a blocking call.
@task(timeout_seconds=2, log_prints=True)
async def render_invoice(order_id: int) -> str:
    print(f"rendering invoice {order_id}")
    await asyncio.sleep(10)  # stands in for a PDF service that hangs
    return f"invoice-{order_id}.pdf"
