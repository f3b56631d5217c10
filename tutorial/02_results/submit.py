from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from tasks import build_invoice, charge_card

if __name__ == "__main__":
    future = build_invoice.delay(42, [1999, 500])
    # future.state reads the run as it is now, without waiting.
    print(f"build_invoice is {future.state.name}")
    # Waits until the run ends (TimeoutError after 60 s), then loads its return value.
    invoice = result_of(future, timeout=60)
    print(f"build_invoice returned {invoice!r}")

    future = charge_card.delay(7, "0000-1111")
    try:
        result_of(future, timeout=60)
    except ValueError as exc:  # a failed run raises the task's own exception
        print(f"charge_card raised {exc!r}")
    # raise_on_failure=False returns the exception instead, to report it, say.
    error = result_of(future, timeout=60, raise_on_failure=False)
    print(f"charge_card is {future.state.name}, its result: {error!r}")
