from prefect.task_worker import serve

from tasks import resize_image

if __name__ == "__main__":
    # A smaller machine: at most 2 runs at once.
    serve(resize_image, limit=2)
