from tutorial.waiting import final_state  # reads the state: result() misses TimedOut (step 02)

from tasks import render_invoice, send_receipt

if __name__ == "__main__":
    calls = {
        "send_receipt('ada@example.com')": send_receipt.delay("ada@example.com"),
        "send_receipt('bob@nowhere.invalid')": send_receipt.delay("bob@nowhere.invalid"),
        "render_invoice(42)": render_invoice.delay(42),
    }
    for call, future in calls.items():
        state = final_state(future, timeout=60)
        # raise_on_failure=False: a failed run's exception is returned, not raised.
        result = state.result(raise_on_failure=False)
        print(f"{call}: {state.name} (type {state.type.value}) -> {result!r}")
