from prefect.task_worker import serve

from tasks import make_thumbnail

if __name__ == "__main__":
    serve(make_thumbnail, limit=2)
