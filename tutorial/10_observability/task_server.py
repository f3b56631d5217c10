import asyncio
import os
import socket

from prefect.task_worker import aserve

from tasks import import_file


def status_port() -> int:
    """TASK_SERVER_STATUS_PORT if set, else any free port (two task servers need two)."""
    if port := os.environ.get("TASK_SERVER_STATUS_PORT"):
        return int(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    port = status_port()
    print(f"status endpoint: http://127.0.0.1:{port}/status", flush=True)
    # In Prefect 3.9.1 serve(..., status_server_port=port) crashes at start-up;
    # the async aserve, run in this process's own event loop, works.
    asyncio.run(aserve(import_file, limit=4, status_server_port=port))
