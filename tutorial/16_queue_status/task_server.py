from prefect.task_worker import serve

from tasks import make_thumbnail

if __name__ == "__main__":
    # Two at a time, so that a burst of runs makes a backlog you can watch drain.
    serve(make_thumbnail, limit=2)
