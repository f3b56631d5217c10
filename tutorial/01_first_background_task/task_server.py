from prefect.task_worker import serve

from tasks import send_welcome_email

if __name__ == "__main__":
    # Runs until stopped: waits for runs of send_welcome_email and executes them here.
    serve(send_welcome_email)
