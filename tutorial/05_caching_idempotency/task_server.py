from prefect.task_worker import serve

from tasks import build_report, send_welcome_email

if __name__ == "__main__":
    serve(build_report, send_welcome_email)
