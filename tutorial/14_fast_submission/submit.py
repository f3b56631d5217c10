import asyncio

from prefect import get_client
from prefect.futures import PrefectDistributedFuture

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from tasks import add_one

NUMBERS = range(5)


def submit_naive() -> list[PrefectDistributedFuture]:
    # Every .delay() opens a new API client of its own, and builds a TLS context for it.
    return [add_one.delay(n) for n in NUMBERS]


async def submit_fast() -> list[PrefectDistributedFuture]:
    # One client for every run. create_run(..., deferred=True) is what .delay() calls
    # underneath; given a client, it uses that one instead of opening a new one.
    async with get_client() as client:
        runs = [
            await add_one.create_run(client=client, parameters={"n": n}, deferred=True)
            for n in NUMBERS
        ]
    # The same future .delay() returns, for the runs create_run made.
    return [PrefectDistributedFuture(task_run_id=run.id) for run in runs]


if __name__ == "__main__":
    naive = submit_naive()
    fast = asyncio.run(submit_fast())  # create_run is a coroutine: run it on an event loop
    print("naive:", [result_of(future, timeout=60) for future in naive])
    print("fast: ", [result_of(future, timeout=60) for future in fast])
