"""Delete finished background task runs that ended before a cut-off, and the files they
leave in local storage: their parameters files and result files. Never a run that is
unfinished, never a file that a remaining run refers to (cached runs share result files),
never a file outside the storage folder.

    python cleanup.py --older-than-days 30 [--tag reports] [--dry-run]

Run it with the task servers' Prefect settings (the same API URL and storage path), every
night from cron, a Kubernetes CronJob or a served flow. Prefect 3.9's database vacuum
deletes old flow runs, not background task runs, and no Prefect service deletes these files.
"""

import argparse
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import ObjectNotFound
from prefect.results import ResultRecordMetadata
from prefect.settings import get_current_settings

PAGE = 200  # the most runs the API returns at once
FINAL = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]
# Later than any run's expected start time; a run with none has had no state, so no file.
ANY_TIME = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass
class Report:
    runs: int = 0
    files: int = 0
    bytes: int = 0
    kept_shared: int = 0  # result files a remaining run still refers to
    outside: list[str] = field(default_factory=list)  # files outside storage: left, with runs
    not_local: list[str] = field(default_factory=list)  # runs with files on a storage block


def storage_folder() -> Path:
    """Where the task servers keep files, as prefect/results.py computes it (with no
    storage block): PREFECT_LOCAL_STORAGE_PATH, by default $PREFECT_HOME/storage."""
    return Path(get_current_settings().results.local_storage_path).expanduser().resolve()


async def task_runs(
    client: PrefectClient, filters: dict, newest: str, before: datetime
) -> AsyncIterator[TaskRun]:
    """Every run that matches `filters` whose `newest` (end_time or expected_start_time) is
    at or before `before`, newest first."""
    seen = set()
    while True:
        body = {
            "task_runs": {**filters, newest: {"before_": before.isoformat()}},
            "sort": f"{newest.upper()}_DESC",
            "limit": PAGE,
        }
        response = await client.request("POST", "/task_runs/filter", json=body)
        page = [TaskRun.model_validate(run) for run in response.raise_for_status().json()]
        new = [run for run in page if run.id not in seen]
        for run in new:
            yield run
        if len(page) < PAGE:
            return
        if not new:
            raise RuntimeError(f"over {PAGE} runs share one {newest}: cannot page past them")
        seen.update(run.id for run in new)
        # Keyset, not offset: a run deleted meanwhile would shift an offset and hide a run.
        before = getattr(page[-1], newest)


def result_file(run: TaskRun) -> str | None:
    """Where the run's result is stored: a path for local or shared storage (Prefect keeps
    it absolute), "block" for a storage block, None when there is no result."""
    record = run.state.data if run.state else None
    if isinstance(record, ResultRecordMetadata) and record.storage_key:
        return record.storage_key if record.storage_block_id is None else "block"
    return None


def to_delete(run: TaskRun, ended_before: datetime, tag: str | None) -> bool:
    """The runs clean_up's filter selects; the server's end_time.before_ is inclusive."""
    return (
        run.flow_run_id is None
        and run.state_type is not None
        and run.state_type.value in FINAL
        and run.end_time is not None
        and run.end_time <= ended_before
        and (tag is None or tag in run.tags)
    )


# region cleanup
async def clean_up(ended_before: datetime, tag: str | None = None, dry_run: bool = False) -> Report:
    report, storage = Report(), storage_folder()
    on_block = get_current_settings().tasks.scheduling.default_storage_block
    async with get_client() as client:
        # Result files that any run this leaves refers to: newer, in a flow, or unfinished.
        kept = set()
        async for run in task_runs(client, {}, "expected_start_time", ANY_TIME):
            if not to_delete(run, ended_before, tag):
                kept.add(result_file(run))
        kept -= {None, "block"}

        finished = {"flow_run_id": {"is_null_": True}, "state": {"type": {"any_": FINAL}}}
        if tag:
            finished["tags"] = {"all_": [tag]}
        async for run in task_runs(client, finished, "end_time", ended_before):
            files = set()
            # Its parameters file is named by an id in its first (Scheduled) state.
            for state in await client.read_task_run_states(run.id):
                if parameters_id := state.state_details.task_parameters_id:
                    files.add("block" if on_block else storage / "parameters" / str(parameters_id))
            if (result := result_file(run)) in kept:
                report.kept_shared += 1
            elif result:
                files.add(result if result == "block" else Path(result))
            if "block" in files:
                report.not_local.append(str(run.id))
                files.remove("block")
            if outside := [str(f) for f in files if not f.resolve().is_relative_to(storage)]:
                report.outside += outside  # never deleted; nor the run, which says where it is
                continue
            for file in files:
                try:
                    report.bytes += file.stat().st_size
                except FileNotFoundError:
                    continue  # never written, or deleted by a pass that stopped halfway
                report.files += 1
                if not dry_run:
                    file.unlink(missing_ok=True)  # files first: the run finds them next time
            if not dry_run:
                try:
                    await client.delete_task_run(run.id)  # its states go with it
                except ObjectNotFound:
                    continue  # another clean-up deleted it meanwhile
            report.runs += 1
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
        f" files kept for runs that remain"
    )
    if report.outside:
        # Another storage path than the task servers' (run it from their folder), or a task
        # with a result_storage of its own: check before you delete these by hand.
        print(f"left {len(report.outside)} files outside {storage_folder()}, and their runs:")
        print("\n".join(f"  {file}" for file in report.outside))
    if report.not_local:
        print(f"{len(report.not_local)} runs have files on a storage block: expire them there")
