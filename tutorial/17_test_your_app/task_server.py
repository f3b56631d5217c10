from prefect.task_worker import serve

from tasks import score_document

if __name__ == "__main__":
    # The tests start this once per session, against their own Prefect server.
    serve(score_document)
