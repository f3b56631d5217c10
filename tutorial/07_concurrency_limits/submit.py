import itertools
import sys
import time

from tasks import check_stock, send_sms

STOCK_CHECKS = 6
MESSAGES = 5


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at the same moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    return max(itertools.accumulate(step for _, step in edges))


def retry_no_state(call, timeout: float, **kwargs):
    """Call future.wait or future.result, again while the run reads as having no state."""
    # On SQLite, Prefect 3.9 can show a run for a moment with no state, and result() then
    # raises RuntimeError("... has no state ...") at once. Step 02 explains it.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(timeout=max(deadline - time.monotonic(), 0.1), **kwargs)
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    futures = [check_stock.delay(f"sku-{n}") for n in range(STOCK_CHECKS)]
    print(f"submitted {STOCK_CHECKS} runs of check_stock")
    stock = [retry_no_state(f.result, timeout=120) for f in futures]
    first = min(r["started"] for r in stock)
    for r in stock:
        print(f"  {r['sku']}: ran {r['started'] - first:5.2f} s to {r['ended'] - first:5.2f} s")
    peak = most_at_once([(r["started"], r["ended"]) for r in stock])
    print(f"check_stock: at most {peak} ran at the same time (limit: 3)")

    futures = [send_sms.delay(f"+15550100{n:02d}") for n in range(MESSAGES)]
    print(f"submitted {MESSAGES} runs of send_sms")
    starts = sorted(retry_no_state(f.result, timeout=120)["started"] for f in futures)
    print("  started at " + ", ".join(f"{t - starts[0]:.2f}" for t in starts) + " s")
    # 2 slots at once, then 1 a second: 5 starts need 3 s or more (less the moment
    # between taking a slot and recording the start).
    spread = starts[-1] - starts[0]
    print(f"send_sms: {MESSAGES} runs started over {spread:.2f} s (2 at once, then 1 a second)")

    sys.exit(0 if peak <= 3 and spread > 2.5 else 1)
