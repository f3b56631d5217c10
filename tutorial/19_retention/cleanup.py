"""Delete finished background task runs that ended before a cut-off, and the files they
leave in storage: their parameters files and result files. Never a run that is unfinished,
and never a file that a run still kept refers to (cached runs share result files).

    python cleanup.py --older-than-days 30 [--tag reports] [--dry-run]

Run it where the task servers' storage settings apply (it deletes files on local or shared
storage; with a storage block such as S3 it deletes runs only, and says so), every night
from cron, a Kubernetes CronJob or a served flow. Prefect 3.9's database vacuum deletes old
flow runs, not background task runs, and no Prefect service deletes these files.
"""

import argparse
import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import TaskRun
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultRecordMetadata, get_or_create_default_task_scheduling_storage

PAGE = 200  # the most runs the API returns at once
FINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]


@dataclass
class Report:
    runs: int = 0
    files: int = 0
    bytes: int = 0
    kept_shared: int = 0  # result files a kept run still refers to
    not_local: list[str] = field(default_factory=list)  # files on a storage block


async def finished_runs(
    client: PrefectClient, ended: dict, offset: int = 0, tag: str | None = None
) -> list[TaskRun]:
    """A page of finished background runs (no flow run), ended in the given window."""
    body = {
        "task_runs": {
            "flow_run_id": {"is_null_": True},
            "state": {"type": {"any_": FINAL}},
            "end_time": ended,
            **({"tags": {"all_": [tag]}} if tag else {}),
        },
        "sort": "END_TIME_DESC",
        "limit": PAGE,
        "offset": offset,
    }
    response = await client.request("POST", "/task_runs/filter", json=body)
    return [TaskRun.model_validate(run) for run in response.raise_for_status().json()]


def result_file(run: TaskRun) -> str | None:
    """Where the run's result is stored: a path for local or shared storage (Prefect keeps
    it absolute), "block" for a storage block, None when there is no result."""
    record = run.state.data if run.state else None
    if isinstance(record, ResultRecordMetadata) and record.storage_key:
        return record.storage_key if record.storage_block_id is None else "block"
    return None


def to_delete(run: TaskRun, ended_before: datetime, tag: str | None) -> bool:
    ended = run.end_time is not None and run.end_time < ended_before
    return ended and (tag is None or tag in run.tags)


# region cleanup
async def clean_up(ended_before: datetime, tag: str | None = None, dry_run: bool = False) -> Report:
    report = Report()
    storage = await get_or_create_default_task_scheduling_storage()
    parameters = (
        Path(storage.basepath, "parameters") if isinstance(storage, LocalFileSystem) else None
    )
    async with get_client() as client:
        # The result files that the runs this leaves still refer to (cached runs share them).
        kept, offset = set(), 0
        while page := await finished_runs(client, {}, offset):
            kept |= {result_file(run) for run in page if not to_delete(run, ended_before, tag)}
            offset += PAGE

        offset = 0  # deleted runs leave the list: without --dry-run, always read page one
        while page := await finished_runs(
            client, {"before_": ended_before.isoformat()}, offset, tag
        ):
            for run in page:
                files = []
                # Its parameters file is named by an id in its first (Scheduled) state.
                for state in await client.read_task_run_states(run.id):
                    if parameters_id := state.state_details.task_parameters_id:
                        files.append(parameters / str(parameters_id) if parameters else "block")
                if (result := result_file(run)) in kept:
                    report.kept_shared += 1
                elif result:
                    files.append(result)
                if not dry_run:
                    await client.delete_task_run(run.id)  # its states go with it
                report.runs += 1
                for file in files:
                    if file == "block":
                        report.not_local.append(str(run.id))
                    elif Path(file).is_file():
                        report.files += 1
                        report.bytes += Path(file).stat().st_size
                        if not dry_run:
                            Path(file).unlink()
            if dry_run:
                offset += PAGE
    return report
    # endregion cleanup


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--older-than-days", type=float, required=True)
    parser.add_argument("--tag", help="only runs with this tag (default: every run)")
    parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    args = parser.parse_args()
    cut_off = datetime.now(UTC) - timedelta(days=args.older_than_days)
    report = asyncio.run(clean_up(cut_off, args.tag, args.dry_run))
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {report.runs} runs that ended before {cut_off:%Y-%m-%d %H:%M} UTC and"
        f" {report.files} files ({report.bytes / 1e6:.1f} MB); {report.kept_shared} result"
        f" files kept for newer runs"
    )
    if report.not_local:
        print(f"{len(report.not_local)} files are on a storage block: expire them there")
