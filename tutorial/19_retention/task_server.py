from prefect.task_worker import serve

from tasks import make_report

if __name__ == "__main__":
    serve(make_report)
