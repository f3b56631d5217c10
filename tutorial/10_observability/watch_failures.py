import asyncio

from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventResourceFilter

# Every run of import_file that ends in a FAILED-type state (Failed, TimedOut, ...). Events
# are named after the state's name, so filter on its type, a label of the event's resource.
FAILURES = EventFilter(
    resource=EventResourceFilter(
        labels={"prefect.resource.name": "import_file", "prefect.state-type": "FAILED"}
    )
)


async def main() -> None:
    # Connecting replays the last minute's events, then follows new ones until Ctrl+C.
    async with get_events_subscriber(filter=FAILURES) as events:
        print("watching for failed runs of import_file", flush=True)
        async for event in events:
            run = event.resource
            tags = [r.id.removeprefix("prefect.tag.") for r in event.related if r.role == "tag"]
            print(
                f"{event.occurred:%H:%M:%S} {run.id} {run['prefect.state-name']} {tags}:"
                f" {run['prefect.state-message']}",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
