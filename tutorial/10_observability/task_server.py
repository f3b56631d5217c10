import asyncio
import os
import socket

from prefect.task_worker import aserve

from tasks import import_file

if __name__ == "__main__":
    # Set TASK_SERVER_STATUS_PORT to find the endpoint (curl, a health check); else any free
    # port, so that two task servers on one machine never fight over one.
    port = int(os.environ.get("TASK_SERVER_STATUS_PORT", "0"))
    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    print(f"status endpoint: http://127.0.0.1:{port}/status", flush=True)
    # Not serve(): with a status port it crashes in Prefect 3.9.1 (../SURPRISES.md).
    asyncio.run(aserve(import_file, limit=4, status_server_port=port))
