import asyncio
import itertools
import sys
import time

from tasks import fetch_report

RUNS = 10


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at the same moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    return max(itertools.accumulate(step for _, step in edges))


async def retry_no_state(call, timeout: float, **kwargs):
    """Await future.wait_async or future.result_async, again while the run has no state."""
    # On SQLite, Prefect 3.9 can show a run for a moment with no state, and result_async()
    # then raises RuntimeError("... has no state ...") at once. Step 02 explains it.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call(timeout=max(deadline - time.monotonic(), 0.1), **kwargs)
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def main() -> int:
    # .delay() is synchronous: it writes the parameters and calls the API before it returns.
    # In async code, run it in a thread so the event loop keeps serving meanwhile.
    futures = [await asyncio.to_thread(fetch_report.delay, n) for n in range(RUNS)]
    print(f"submitted {RUNS} runs of fetch_report")

    # result_async() is the awaitable twin of result(); bound it the same way.
    results = await asyncio.gather(*(retry_no_state(f.result_async, timeout=120) for f in futures))

    first = min(r["started"] for r in results)
    for r in results:
        print(
            f"  report {r['report']}: ran {r['started'] - first:5.2f} s"
            f" to {r['ended'] - first:5.2f} s in pid {r['pid']}"
        )
    pids = {r["pid"] for r in results}
    threads = {(r["pid"], r["thread"]) for r in results}
    peak = most_at_once([(r["started"], r["ended"]) for r in results])
    print(
        f"{RUNS} runs in {len(pids)} process(es), on {len(threads)} thread(s);"
        f" at most {peak} ran at the same time"
    )
    return 0 if len(pids) == 1 and len(threads) == 1 and peak > 1 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
