import sys
import time

from tasks import Invoice, add, build_invoice, charge_card


def retry_no_state(call, timeout: float, **kwargs):
    """Call future.wait or future.result, again while the run reads as having no state."""
    # On SQLite, Prefect 3.9 can show a run for a moment with no state, and wait() and
    # result() then raise RuntimeError("... has no state ...") at once (see the lesson).
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(timeout=max(deadline - time.monotonic(), 0.1), **kwargs)
        except RuntimeError as exc:
            if "has no state" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":
    future = build_invoice.delay(42, [1999, 500])
    # wait() returns when the run is final or the timeout is up; it raises no TimeoutError.
    retry_no_state(future.wait, timeout=1)
    print(f"after wait(timeout=1): {future.state.name}, final: {future.state.is_final()}")
    # result() waits too, then loads the return value from result storage.
    invoice = retry_no_state(future.result, timeout=60)
    print(f"build_invoice returned {type(invoice).__name__}: {invoice!r}")
    print(f"add(2, 3) returned {retry_no_state(add.delay(2, 3).result, timeout=60)!r}")

    future = charge_card.delay(7, "0000-1111")
    # With raise_on_failure=False a failed run's exception is returned, not raised.
    error = retry_no_state(future.result, timeout=60, raise_on_failure=False)
    print(f"charge_card ended {future.state.name}; result(raise_on_failure=False): {error!r}")
    try:
        future.result(timeout=60)
    except ValueError as exc:
        print(f"result() raised ValueError: {exc}")

    if not isinstance(invoice, Invoice) or not isinstance(error, ValueError):
        sys.exit("expected an Invoice and a ValueError")
