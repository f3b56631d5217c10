"""What step 19's clean-up frees, measured: N background runs on a fresh Prefect server
(SQLite), half of them aged past the cut-off, then cleanup.py.

    uv run python -m benchmarks.retention --runs 10000

Prints the database's size and the storage folder's size and file count before and after,
and how long the clean-up took. The runs are real (submitted with create_run on one client,
run by two task servers); their ages are set in the database afterwards, the one way to make
old runs without waiting a month.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from tutorial.runner import ROOT, Process, free_port, server_is_up, wait_until_subscribed

STEP = ROOT / "tutorial" / "19_retention"
SUBMIT = """
import asyncio, sys
from prefect import get_client, tags
from tasks import make_report

async def main(n):
    async with get_client() as client:
        slots = asyncio.Semaphore(4)  # a few requests at a time: SQLite takes one write at once

        async def submit(i):
            async with slots:
                parameters = {"day": str(i)}
                await make_report.create_run(client=client, parameters=parameters, deferred=True)

        with tags("retention-benchmark"):
            await asyncio.gather(*(submit(i) for i in range(n)))

asyncio.run(main(int(sys.argv[1])))
"""


def sizes(home: Path) -> tuple[float, int, float]:
    """Database MB (compacted: SQLite keeps freed pages until VACUUM), files in storage,
    storage MB. Call it with the Prefect server stopped."""
    database = home / "prefect.db"
    with sqlite3.connect(database, timeout=60) as conn:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = sum(p.stat().st_size for p in home.glob("prefect.db*")) / 1e6
    files = [p for p in (home / "storage").rglob("*") if p.is_file()]
    return db, len(files), sum(p.stat().st_size for p in files) / 1e6


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=60) as conn:
        return conn.execute(sql).fetchone()[0]


TABLES = ("task_run", "task_run_state", "log", "events")


def start_server(home: Path, port: int, env: dict) -> Process:
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    server = Process("server", [*argv, "--port", str(port), "--no-ui"], env=env, echo=False)
    while not server_is_up(env["PREFECT_API_URL"]):
        time.sleep(0.5)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="retention-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1"}
    database = home / "prefect.db"
    processes = [start_server(home, port, env)]
    try:
        for _ in range(2):
            argv = [sys.executable, str(STEP / "task_server.py")]
            processes.append(task_server := Process("task-server", argv, env=env, echo=False))
            wait_until_subscribed(api, task_server)
        started = time.monotonic()
        submit = Process(
            "submit",
            [sys.executable, "-c", SUBMIT, str(args.runs)],
            # More retries than the default 5: a busy SQLite answers 503 for a while.
            env={**env, "PYTHONPATH": str(STEP), "PREFECT_CLIENT_MAX_RETRIES": "20"},
            echo=False,
        )
        assert submit.wait(timeout=7200) == 0, submit.output
        final = "SELECT count(*) FROM task_run WHERE state_type = 'COMPLETED'"
        while count(database, final) < args.runs:
            time.sleep(2)
        print(f"{args.runs} runs completed in {time.monotonic() - started:.0f} s")
        for process in reversed(processes):
            process.stop()
        # Age half of them: ended 40 days ago.
        with sqlite3.connect(database, timeout=60) as conn:
            conn.execute(
                "UPDATE task_run SET end_time = datetime(end_time, '-40 days')"
                " WHERE rowid IN (SELECT rowid FROM task_run ORDER BY rowid LIMIT ?)",
                (args.runs // 2,),
            )
        rows = {table: count(database, f"SELECT count(*) FROM {table}") for table in TABLES}
        db, files, storage = sizes(home)
        print(f"before: rows {rows}")
        print(f"before: database {db:.1f} MB, storage {files} files, {storage:.1f} MB")

        processes = [start_server(home, port, env)]
        started = time.monotonic()
        argv = [sys.executable, str(STEP / "cleanup.py"), "--older-than-days", "30"]
        cleanup = Process("cleanup", argv, env=env, echo=False)
        assert cleanup.wait(timeout=7200) == 0, cleanup.output
        print(cleanup.output.strip().splitlines()[-1])
        print(f"clean-up took {time.monotonic() - started:.0f} s")
        # The server deletes a deleted run's logs in a job of its own, a moment later.
        orphans = "SELECT count(*) FROM log WHERE task_run_id NOT IN (SELECT id FROM task_run)"
        deadline = time.monotonic() + 300
        while count(database, orphans) and time.monotonic() < deadline:
            time.sleep(1)
        processes[0].stop()
        rows = {table: count(database, f"SELECT count(*) FROM {table}") for table in TABLES}
        db, files, storage = sizes(home)
        print(f"after:  rows {rows}")
        print(f"after:  database {db:.1f} MB, storage {files} files, {storage:.1f} MB")
    finally:
        for process in processes:
            process.stop()


if __name__ == "__main__":
    main()
