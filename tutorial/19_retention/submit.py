import asyncio
from datetime import UTC, datetime

from prefect import get_client, tags

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from cleanup import clean_up
from tasks import make_report

TAG = "retention-demo"  # the clean-up here touches only this step's runs


async def results_of(run_ids) -> list:
    """Read each run and its result back from Prefect, as the UI or an app would."""
    async with get_client() as client:
        return [await (await client.read_task_run(i)).state.aresult() for i in run_ids]


# region main
if __name__ == "__main__":
    with tags(TAG):
        older = [make_report.delay(f"2026-11-{day:02}") for day in range(1, 7)]
        [result_of(future, timeout=60) for future in older]
        cut_off = datetime.now(UTC)  # in production: 30 days ago
        newer = [make_report.delay(f"2026-12-{day:02}") for day in range(1, 5)]
        [result_of(future, timeout=60) for future in newer]

    report = asyncio.run(clean_up(cut_off, tag=TAG))
    print(
        f"deleted {report.runs} runs that ended before the cut-off, and their {report.files}"
        f" files ({report.bytes / 1000:.0f} kB)"
    )
    kept = asyncio.run(results_of([future.task_run_id for future in newer]))
    print(f"kept {len(kept)} newer runs, results intact: {[r['day'] for r in kept]}")
    # endregion main
