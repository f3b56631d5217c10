from collections import Counter

from tutorial.waiting import result_of  # future.result() without its two Prefect 3.9 gaps (step 02)

from tasks import resize_image

if __name__ == "__main__":
    # Fan out with a loop of .delay() ...
    futures = [resize_image.delay(f"photo-{i}.jpg") for i in range(6)]
    # ... or with .map(..., deferred=True), the same loop done for you.
    futures += resize_image.map([f"scan-{i}.png" for i in range(6)], deferred=True)
    print(f"submitted {len(futures)} runs")

    results = [result_of(future, timeout=120) for future in futures]
    for future, resized in zip(futures, results, strict=True):
        print(f"{resized.image:<12} ran on {resized.server}  (run {future.task_run_id})")
    for server, runs in sorted(Counter(resized.server for resized in results).items()):
        print(f"{server}: {runs} runs")
