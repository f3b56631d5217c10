import time

from prefect import task


@task(log_prints=True)
def make_report(day: str) -> dict:
    time.sleep(0.2)  # stands in for building a daily report
    print(f"Report for {day} done")  # a log line per run, kept in Prefect's database
    return {"day": day, "rows": 1000}
