import asyncio

from prefect.task_worker import aserve

from tasks import add_to_crm, send_welcome_email, set_up_workspace

if __name__ == "__main__":
    # Needs the same SIGNUP_DATABASE_URL as the app (the tasks read and write users), and
    # API_URL to reach the mail and CRM providers.
    # On a loop of its own, not serve(), which can freeze for good (../SURPRISES.md#serve-deadlock).
    asyncio.run(aserve(send_welcome_email, set_up_workspace, add_to_crm))
