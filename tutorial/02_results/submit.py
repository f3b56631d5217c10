import sys

from tasks import Invoice, add, build_invoice, charge_card

if __name__ == "__main__":
    future = build_invoice.delay(42, [1999, 500])
    # wait() returns when the run is final or the timeout is up; it never raises.
    future.wait(timeout=1)
    print(f"after wait(timeout=1): {future.state.name}, final: {future.state.is_final()}")
    # result() waits too, then loads the return value from result storage.
    invoice = future.result(timeout=60)
    print(f"build_invoice returned {type(invoice).__name__}: {invoice!r}")
    print(f"add(2, 3) returned {add.delay(2, 3).result(timeout=60)!r}")

    future = charge_card.delay(7, "0000-1111")
    # With raise_on_failure=False a failed run's exception is returned, not raised.
    error = future.result(timeout=60, raise_on_failure=False)
    print(f"charge_card ended {future.state.name}; result(raise_on_failure=False): {error!r}")
    try:
        future.result(timeout=60)
    except ValueError as exc:
        print(f"result() raised ValueError: {exc}")

    if not isinstance(invoice, Invoice) or not isinstance(error, ValueError):
        sys.exit("expected an Invoice and a ValueError")
