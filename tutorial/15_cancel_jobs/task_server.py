from prefect.task_worker import serve

from tasks import score_document

if __name__ == "__main__":
    # One job at a time, so that a second job waits in the queue, where you can cancel it.
    serve(score_document, limit=1)
