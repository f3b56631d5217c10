import sys
import time

from prefect.states import State

from tasks import WORK_LOG, build_report, count_visit, send_welcome_email


def wait_for_final_state(future, timeout: float) -> State:
    # future.result() does not hear a run that ends Cached: read the state from the API.
    deadline = time.monotonic() + timeout
    while not (state := future.state).is_final():
        if time.monotonic() > deadline:
            raise TimeoutError(f"task run {future.task_run_id} is still {state.name}")
        time.sleep(0.5)
    return state


def show(call: str, future) -> str:
    state = wait_for_final_state(future, timeout=60)
    print(f"{call}: {state.name} -> {state.result()!r} (task run {future.task_run_id})")
    return state.name


def work_done() -> list[str]:
    return WORK_LOG.read_text().splitlines() if WORK_LOG.exists() else []


if __name__ == "__main__":
    before = len(work_done())

    # 1. The same inputs twice, one after the other: the second run is Cached.
    reports = [show("build_report('2026-11-25')", build_report.delay("2026-11-25"))]
    reports.append(show("build_report('2026-11-25')", build_report.delay("2026-11-25")))

    # 2. Two requests for one welcome email at the same moment (a double click).
    ada = send_welcome_email.delay("ada@example.com", "Ada")
    ada_again = send_welcome_email.delay("Ada@Example.com", "Ada Lovelace")
    emails = [show("send_welcome_email('ada@example.com', 'Ada')", ada)]
    emails.append(show("send_welcome_email('Ada@Example.com', 'Ada Lovelace')", ada_again))

    # 3. No cache policy: identical calls both run.
    visits = [show("count_visit('/pricing')", count_visit.delay("/pricing")) for _ in range(2)]

    done = work_done()
    print(f"work done by this run ({WORK_LOG}):")
    for line in done[before:]:
        print(f"  {line}")
    emails_ever = [line.lower() for line in done].count("sent a welcome email to ada@example.com")
    print(f"welcome emails ever sent to ada@example.com: {emails_ever}")

    # Exit non-zero unless each case behaved as shown. (Run this script again and the
    # first report and email are Cached too: their records are still in result storage.)
    ok = reports[1] == "Cached" and emails.count("Completed") <= 1 and emails_ever == 1
    sys.exit(0 if ok and visits == ["Completed", "Completed"] else 1)
