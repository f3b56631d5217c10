from prefect.utilities.urls import url_for

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from tasks import send_welcome_email

if __name__ == "__main__":
    # Called like a function, a task runs right here and blocks until it is done.
    print(f"foreground: {send_welcome_email('ada@example.com')}")

    # .delay() only records a run with the Prefect server and returns a future at once;
    # a task server picks the run up and executes it in its own process.
    future = send_welcome_email.delay("grace@example.com")
    print(f"background: submitted task run {future.task_run_id}")
    print(f"  watch it in the UI: {url_for(future)}")

    # Wait for the run's return value, and never without a timeout.
    print(f"background: {result_of(future, timeout=60)}")
