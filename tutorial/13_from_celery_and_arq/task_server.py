from prefect.task_worker import serve

from tasks import make_thumbnail

if __name__ == "__main__":
    # At most 4 runs at once in this process, like `celery worker -c 4` or arq's max_jobs = 4.
    serve(make_thumbnail, limit=4)
