"""Run a task server script with a race in Prefect 3.9.1 made wide enough to hit every time.

Usage: python widened_window.py SCRIPT

A tagged run's engine thread, the first time it meets its set of tags, creates a
ConcurrencySlotAcquisitionWithLeaseService: it holds the lock that every Prefect service's
instance() takes (prefect/_internal/concurrency/services.py) and waits for Prefect's global
loop to start the service. Here it prints a line first and holds the lock WIDEN seconds longer.
A watchdog prints a line when the global loop has not answered for STUCK seconds."""

import asyncio
import runpy
import sys
import threading
import time
from pathlib import Path

from prefect._internal.concurrency.api import create_call, from_sync
from prefect._internal.concurrency.services import _QueueServiceBase

WIDEN = 5.0
STUCK = 15.0

new_instance = _QueueServiceBase._new_instance.__func__


def slow_new_instance(cls, *args):
    if cls.__name__ == "ConcurrencySlotAcquisitionWithLeaseService":
        # Not print(): a run with log_prints turns it into a log record, whose handler asks
        # for a service instance, and so for the lock held here.
        sys.stdout.write(f"widened: holding the services' lock {WIDEN:.0f} s\n")
        sys.stdout.flush()
        time.sleep(WIDEN)
    return new_instance(cls, *args)


def watchdog() -> None:
    while True:
        call = from_sync.call_soon_in_loop_thread(create_call(asyncio.sleep, 0))
        try:
            call.result(timeout=STUCK)
        except TimeoutError:
            print(f"watchdog: the global loop has not answered for {STUCK:.0f} s", flush=True)
            return
        time.sleep(1)


if __name__ == "__main__":
    _QueueServiceBase._new_instance = classmethod(slow_new_instance)
    threading.Thread(target=watchdog, daemon=True).start()
    script = Path(sys.argv[1])
    sys.path.insert(0, str(script.parent))
    sys.argv = sys.argv[1:]
    runpy.run_path(str(script), run_name="__main__")
