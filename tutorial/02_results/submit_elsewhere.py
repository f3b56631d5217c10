import tempfile

from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from tasks import charge_card

if __name__ == "__main__":
    # A folder the task server cannot see, like the disk of another machine.
    with (
        tempfile.TemporaryDirectory(prefix="another-machine-") as elsewhere,
        temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: elsewhere}),
    ):
        future = charge_card.delay(8, "4242-4242")
        print(f"submitted task run {future.task_run_id}")
        print(f"  its parameters went to {elsewhere}/parameters/")
        try:
            print(f"charge_card returned {result_of(future, timeout=15)!r}")
        except (ObjectNotFound, TimeoutError) as exc:
            print(f"result_of raised {type(exc).__name__}: the run never ran")
            print(f"  future.state now reads {future.state.name}")
