import asyncio

from prefect import task


@task(log_prints=True)
async def fetch_report(report_id: int) -> str:
    print(f"fetching report {report_id}")
    # Stands in for a slow call made with an async client (httpx.AsyncClient, asyncpg, ...).
    # While this run awaits, the task server's event loop runs the others.
    await asyncio.sleep(5)
    return f"report {report_id}"
