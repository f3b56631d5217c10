import time

from prefect.utilities.urls import url_for

from tasks import send_welcome_email


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
    # Called like a function, a task runs right here and blocks until it is done.
    started = time.perf_counter()
    result = send_welcome_email("ada@example.com")
    print(f"foreground: {result} (took {time.perf_counter() - started:.1f} s)")

    # .delay() only records the run with the Prefect server and returns a future;
    # a task server picks the run up and executes it in its own process.
    started = time.perf_counter()
    future = send_welcome_email.delay("grace@example.com")
    print(f"background: submitted task run {future.task_run_id}")
    print(f"  .delay() returned after {time.perf_counter() - started:.2f} s")
    print(f"  watch it in the UI: {url_for(future)}")

    # Always bound the wait: with no timeout, result() can wait forever.
    print(f"background: {retry_no_state(future.result, timeout=60)}")
