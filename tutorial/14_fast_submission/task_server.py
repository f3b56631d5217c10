from prefect.task_worker import serve

from tasks import add_one

if __name__ == "__main__":
    # Start this file more than once to run the runs in several processes.
    serve(add_one)
