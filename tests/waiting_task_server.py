from prefect.task_worker import serve
from waiting_tasks import double, fails, too_slow

if __name__ == "__main__":
    serve(double, fails, too_slow)
