import os
import socket
import time

from prefect import task
from pydantic import BaseModel


class Resized(BaseModel):
    image: str
    server: str  # "<hostname>-<pid>": how the Prefect API names a task server
    started: float
    ended: float


@task
def resize_image(image: str) -> Resized:
    started = time.time()
    time.sleep(2)  # stands in for the CPU work
    server = f"{socket.gethostname()}-{os.getpid()}"
    return Resized(image=image, server=server, started=started, ended=time.time())
