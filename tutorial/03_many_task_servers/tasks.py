import os
import socket
import time

from prefect import task
from pydantic import BaseModel


class Resized(BaseModel):
    image: str
    server: str  # "<hostname>-<pid>": how the Prefect API names a task server


@task
def resize_image(image: str) -> Resized:
    time.sleep(2)  # stands in for the CPU work
    return Resized(image=image, server=f"{socket.gethostname()}-{os.getpid()}")
