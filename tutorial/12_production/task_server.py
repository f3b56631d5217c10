import os

from prefect.task_worker import serve

from tasks import score_document

# Runs at once on this task server; add task servers (machines) to go beyond it.
LIMIT = int(os.environ.get("TASK_SERVER_LIMIT", "10"))

if __name__ == "__main__":
    serve(score_document, limit=LIMIT)
