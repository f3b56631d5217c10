import time

from prefect import task
from prefect.runtime import task_run


@task(retries=2, retry_delay_seconds=1, log_prints=True)
def import_file(file_id: int) -> str:
    attempt = task_run.run_count  # 1 for the first attempt, 2 for the first retry, ...
    print(f"attempt {attempt}: importing file {file_id}")
    time.sleep(0.5 + (file_id % 3) * 0.5)  # stands in for parsing and saving the rows
    if file_id % 10 == 9:
        raise ValueError(f"file {file_id} is corrupt")  # every attempt fails
    if file_id % 10 == 4 and attempt == 1:
        raise ConnectionError("storage timed out")  # the first attempt fails, a retry works
    return f"file {file_id} imported"
