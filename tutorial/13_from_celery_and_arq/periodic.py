from canvas import album

if __name__ == "__main__":
    # Celery beat's job: every night at 03:00 UTC, make an album. serve() registers a
    # deployment with this schedule, then runs each of its flow runs in this process; the
    # flow's make_thumbnail runs still go to the task servers. Runs until stopped.
    album.serve(name="nightly-album", cron="0 3 * * *", parameters={"count": 3})
