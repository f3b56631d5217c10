import sys
import time
from collections import defaultdict

from tasks import resize_image


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at the same moment."""
    # At equal times the end (-1) sorts before the start (+1): back-to-back runs don't overlap.
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, change in edges:
        open_now += change
        most = max(most, open_now)
    return most


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
    # Fan out with a loop of .delay() ...
    futures = [resize_image.delay(f"photo-{i}.jpg") for i in range(6)]
    # ... or with .map(..., deferred=True), the same loop done for you.
    futures += resize_image.map([f"scan-{i}.png" for i in range(6)], deferred=True)
    print(f"submitted {len(futures)} runs")

    results = [retry_no_state(future.result, timeout=120) for future in futures]
    t0 = min(r.started for r in results)
    by_server = defaultdict(list)
    for future, r in zip(futures, results, strict=True):
        by_server[r.server].append((r.started, r.ended))
        print(
            f"{r.image:<12} on {r.server}  {r.started - t0:4.1f} s -> {r.ended - t0:4.1f} s"
            f"  (run {future.task_run_id})"
        )
    for server, intervals in sorted(by_server.items()):
        print(f"{server}: {len(intervals)} runs, at most {most_at_once(intervals)} at once")

    if len(by_server) < 2:
        sys.exit("only one task server ran the runs: start both task servers first")
