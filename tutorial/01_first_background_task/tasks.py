import time

from prefect import task


@task(log_prints=True)
def send_welcome_email(address: str) -> str:
    time.sleep(2)  # stands in for a slow mail server
    print(f"Sent a welcome email to {address}")
    return f"welcome email sent to {address}"
