import os

import pinned_tasks
from prefect.task_worker import serve

if __name__ == "__main__":
    # TASKS names the tasks to serve (default: the ones tests/test_waiting.py shares).
    names = os.environ.get("TASKS", "double,fails,too_slow").split(",")
    serve(*(getattr(pinned_tasks, name) for name in names))
