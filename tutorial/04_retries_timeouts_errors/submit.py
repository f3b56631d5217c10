import sys
import time

from prefect.states import State

from tasks import render_invoice, send_receipt


def wait_for_final_state(future, timeout: float) -> State:
    # future.result() listens for Completed, Failed, Crashed and Cancelled events only:
    # it does not hear a run that ends TimedOut (or Cached) before its own timeout is up.
    # Reading the run's state from the API works for every final state.
    deadline = time.monotonic() + timeout
    while not (state := future.state).is_final():
        if time.monotonic() > deadline:
            raise TimeoutError(f"task run {future.task_run_id} is still {state.name}")
        time.sleep(0.5)
    return state


if __name__ == "__main__":
    calls = {
        "send_receipt('ada@example.com')": send_receipt.delay("ada@example.com"),
        "send_receipt('bob@nowhere.invalid')": send_receipt.delay("bob@nowhere.invalid"),
        "render_invoice(42)": render_invoice.delay(42),
    }
    outcomes = []
    for call, future in calls.items():
        state = wait_for_final_state(future, timeout=60)
        # raise_on_failure=False: a failed run's exception is returned, not raised.
        result = state.result(raise_on_failure=False)
        print(f"{call}: task run {future.task_run_id}")
        print(f"  state:   {state.name} (type {state.type.value})")
        print(f"  message: {state.message or '-'}")
        print(f"  result:  {result!r}")
        outcomes.append(state.name)

    # Exit non-zero if the runs did not end the way this step shows.
    sys.exit(0 if outcomes == ["Completed", "Failed", "TimedOut"] else 1)
