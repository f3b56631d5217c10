import asyncio

from tutorial.waiting import result_of_async  # result() without its two gaps (step 02)

from tasks import fetch_report


async def main() -> None:
    # .delay() is synchronous (it writes the parameters and calls the API): in async code,
    # run it in a thread, so the event loop keeps serving meanwhile.
    futures = [await asyncio.to_thread(fetch_report.delay, n) for n in range(10)]
    print(f"submitted {len(futures)} runs of fetch_report")
    # Await them all at once, each with a timeout.
    reports = await asyncio.gather(*(result_of_async(f, timeout=120) for f in futures))
    print(f"got {', '.join(reports)}")


if __name__ == "__main__":
    asyncio.run(main())
