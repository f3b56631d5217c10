"""A task server for the benchmark's jobs: `python -m benchmarks.prefect_task_server LIMIT`."""

import sys

from prefect.task_worker import serve

from benchmarks.prefect_jobs import noop, pause

if __name__ == "__main__":
    serve(noop, pause, limit=int(sys.argv[1]))
