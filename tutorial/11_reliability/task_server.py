import asyncio
import contextlib
import os
import signal

from prefect.client.schemas.objects import TaskRun
from prefect.client.subscriptions import Subscription
from prefect.events import emit_event
from prefect.logging import get_logger
from prefect.settings import get_current_settings
from prefect.task_worker import TaskWorker

from tasks import charge_order

logger = get_logger("task_server")
LIMIT = int(os.environ.get("TASK_SERVER_LIMIT", "10"))
GRACE = float(os.environ.get("TASK_SERVER_GRACE", "30"))
# Seconds between two heartbeats for each run in flight; keep recover.py's --running-after
# well above it.
HEARTBEAT = float(os.environ.get("TASK_SERVER_HEARTBEAT", "5"))


async def serve_until_signalled(*tasks, limit: int, grace: float) -> None:
    """Like prefect.task_worker.serve, but SIGTERM and Ctrl+C stop it gracefully: take no
    new runs, let the runs in flight finish and report their final state, then return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    worker = TaskWorker(*tasks, limit=limit)
    subscription = Subscription(
        model=TaskRun,
        path="/task_runs/subscriptions/scheduled",
        keys=worker.task_keys,
        client_id=worker.client_id,
        base_url=get_current_settings().api.url,
    )
    slots = asyncio.Semaphore(limit)
    in_flight: set[asyncio.Task] = set()
    running: set = set()  # the ids of the runs in flight
    receiving = False

    async def run(task_run: TaskRun) -> None:
        running.add(task_run.id)
        try:
            await worker.execute_task_run(task_run)
        finally:
            running.discard(task_run.id)
            slots.release()

    async def heartbeat() -> None:
        # Prefect 3.9 sends heartbeats for flow runs, not for task runs. These tell
        # recover.py that a long run is alive, not stranded by a task server that died.
        while True:
            for run_id in list(running):
                emit_event(
                    event="task-server.heartbeat",
                    resource={"prefect.resource.id": f"prefect.task-run.{run_id}"},
                    payload={"task_server": worker.client_id},
                )
            await asyncio.sleep(HEARTBEAT)

    async def receive() -> None:
        nonlocal receiving
        while True:
            # Take a run only when a slot is free: every run this server acknowledges
            # to the Prefect server starts at once, none waits here to be dropped.
            await slots.acquire()
            receiving = True
            task_run = await anext(subscription)
            receiving = False
            job = asyncio.create_task(run(task_run))
            in_flight.add(job)
            job.add_done_callback(in_flight.discard)

    async with worker:
        logger.info(f"Serving {' '.join(sorted(worker.task_keys))} (limit {limit})")
        receiver = asyncio.create_task(receive())
        beating = asyncio.create_task(heartbeat())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([receiver, stopped], return_when=asyncio.FIRST_COMPLETED)
        if receiver.done():
            receiver.result()  # the subscription failed: raise its error
        # region stop
        logger.info(f"Stopping: no new runs; waiting for {len(in_flight)} in flight")

        # Between two runs the receiver only waits for a slot: cancelling it is safe. While
        # it waits for a run, closing the websocket ends the wait; a run the Prefect server
        # sent but we never acknowledged goes back to its queue for another task server.
        if not receiving:
            receiver.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(subscription.websocket.close(), timeout=5)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(receiver, timeout=5)

        if in_flight:
            _, unfinished = await asyncio.wait(in_flight, timeout=grace)
            if unfinished:
                logger.warning(f"{len(unfinished)} runs still running after {grace:.0f} s")
                os._exit(1)  # their threads cannot be stopped; they stay Running
        # endregion stop
        beating.cancel()
    logger.info("Stopped: every run it took has finished")


if __name__ == "__main__":
    asyncio.run(serve_until_signalled(charge_order, limit=LIMIT, grace=GRACE))
