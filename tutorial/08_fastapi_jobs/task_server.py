from prefect.task_worker import serve

from tasks import score_document

if __name__ == "__main__":
    serve(score_document)
