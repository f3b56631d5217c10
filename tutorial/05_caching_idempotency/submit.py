from tutorial.waiting import final_state  # reads the state: result() misses Cached (step 02)

from tasks import build_report, send_welcome_email


def show(call: str, future) -> None:
    state = final_state(future, timeout=60)
    print(f"{call}: {state.name} -> {state.result()!r}")


if __name__ == "__main__":
    # The same arguments twice, one after the other: the second run is Cached.
    show("build_report('2026-11-25')", build_report.delay("2026-11-25"))
    show("build_report('2026-11-25')", build_report.delay("2026-11-25"))

    # Two requests for one welcome email at the same moment (a double click).
    ada = send_welcome_email.delay("ada@example.com", "Ada")
    ada_again = send_welcome_email.delay("Ada@Example.com", "Ada Lovelace")
    show("send_welcome_email('ada@example.com', 'Ada')", ada)
    show("send_welcome_email('Ada@Example.com', 'Ada Lovelace')", ada_again)
