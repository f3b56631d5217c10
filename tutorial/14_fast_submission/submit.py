import asyncio
import sys
import time
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

from tasks import add_one

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 50


# region naive
def submit_naive(numbers: list[int]) -> list[UUID]:
    # Every .delay() opens a new API client and writes the parameters file on its own.
    return [add_one.delay(n).task_run_id for n in numbers]


# endregion naive


# region fast
async def submit_fast(numbers: list[int]) -> list[UUID]:
    # One client for all the runs. create_run(..., deferred=True) is what .delay() calls
    # underneath; given a client, it uses that one instead of opening a new one.
    async with get_client() as client:
        runs = [
            await add_one.create_run(client=client, parameters={"n": n}, deferred=True)
            for n in numbers
        ]
    return [run.id for run in runs]


# endregion fast


# region wait
async def wait_for_all(ids: list[UUID], timeout: float) -> dict[UUID, int | None]:
    """Poll the API until every run has a final state; the result of each Completed run."""
    results: dict[UUID, int | None] = {}
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while len(results) < len(ids) and time.monotonic() < deadline:
            waiting = [i for i in ids if i not in results]
            for start in range(0, len(waiting), 200):  # the API returns 200 runs at most
                chunk = TaskRunFilter(id=TaskRunFilterId(any_=waiting[start : start + 200]))
                for run in await client.read_task_runs(task_run_filter=chunk, limit=200):
                    if run.state and run.state.is_final():
                        completed = run.state.is_completed()
                        results[run.id] = await run.state.aresult() if completed else None
            if len(results) < len(ids):
                await asyncio.sleep(0.5)
    return results


# endregion wait


def run(name: str, submit, numbers: list[int]) -> bool:
    started = time.perf_counter()
    ids = submit(numbers)
    submitted = time.perf_counter() - started
    results = asyncio.run(wait_for_all(ids, timeout=300))
    finished = time.perf_counter() - started
    right = sum(results.get(i) == n + 1 for i, n in zip(ids, numbers, strict=True))
    print(
        f"{name}: {len(ids)} runs submitted in {submitted:.1f} s ({len(ids) / submitted:.1f}/s),"
        f" {right} completed with the right result after {finished:.1f} s"
        f" ({right / finished:.1f}/s)"
    )
    return right == len(numbers)


if __name__ == "__main__":
    numbers = list(range(RUNS))
    ok = run("naive", submit_naive, numbers)
    ok &= run("fast ", lambda ns: asyncio.run(submit_fast(ns)), numbers)
    sys.exit(0 if ok else 1)
