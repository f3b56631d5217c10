import sys
import tempfile

from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from submit import retry_no_state
from tasks import add

if __name__ == "__main__":
    # A folder the task server cannot see, like the disk of another machine.
    with (
        tempfile.TemporaryDirectory(prefix="another-machine-") as elsewhere,
        temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: elsewhere}),
    ):
        future = add.delay(2, 3)
        print(f"submitted task run {future.task_run_id}")
        print(f"  its parameters went to {elsewhere}/parameters/")
        try:
            value = retry_no_state(future.result, timeout=15)
        except (ObjectNotFound, TimeoutError) as exc:
            print(f"result() raised {type(exc).__name__}: the run never ran")
            print(f"  future.state now reads {future.state.name}")
        else:
            sys.exit(f"the run completed ({value!r}): this storage is shared after all")
