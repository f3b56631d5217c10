import asyncio

from prefect import get_run_logger, task


@task
async def fetch_report(report_id: int) -> str:
    # The run's own logger: print() with log_prints loses lines when runs overlap (notes).
    get_run_logger().info(f"fetching report {report_id}")
    # Stands in for a slow call made with an async client (httpx.AsyncClient, asyncpg, ...).
    # While this run awaits, the task server's event loop runs the others.
    await asyncio.sleep(5)
    return f"report {report_id}"
