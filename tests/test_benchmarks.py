"""The benchmark command runs end to end: every setup gets every job back, and the table, the
JSON and the chart are written. No speed is asserted: on a shared machine that is noise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from benchmarks import report
from benchmarks.measure import percentile
from benchmarks.run import README, RESULTS, SETUPS, all_done, parse_args, postgres_installed
from tutorial.runner import ROOT

QUICK = {"noop": 10, "pause": 10}
CLIENTS = 10
PHASE_KEYS = {
    *("submit_ms_p50", "submit_ms_p99", "submits_per_s", "e2e_s", "tasks_per_s"),
    *("queue_ms_p50", "queue_ms_p95"),
}
API_KEYS = {"post_ms_p50", "post_ms_p99", "health_ms_p99"}


def test_quick_run_completes_every_job_in_every_setup(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    if postgres_installed() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    out = tmp_path / "results"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "jobs completed / submitted" in run.stdout

    results = json.loads((out / "latest.json").read_text())
    assert list(results["setups"]) == list(SETUPS) == ["naive", "recommended", "celery", "arq"]
    assert results["all_completed"] is True
    assert results["table"] in run.stdout
    for name, setup in results["setups"].items():
        assert setup["error"] is None, name
        assert setup["ok"] is True, name
        for phase, count in QUICK.items():
            report = setup[phase]
            assert report["submitted"] == report["completed"] == count, (name, report)
            assert report["errors"] == [], (name, report)
            assert all(report[key] is not None for key in PHASE_KEYS), (name, report)
        api = setup["api"]
        assert api["requests"] == api["accepted"] == api["completed"] == CLIENTS, (name, api)
        assert all(api[key] is not None for key in API_KEYS), (name, api)
        jobs = sum(QUICK.values()) + CLIENTS
        assert setup["completions"]["expected"] == setup["completions"]["completed"] == jobs
        if name in ("naive", "recommended"):
            # Prefect's own record agrees: every run it holds is Completed.
            counts = setup["prefect_api"]
            assert counts["task_runs"] == counts["completed"] == jobs, (name, counts)

    assert {"python", "prefect", "celery", "arq", "redis-server"} <= set(results["versions"])
    assert {"cpus", "cpu_model"} <= set(results["machine"])
    assert len(results["load_average_start"]) == len(results["load_average_end"]) == 3
    assert (out / "latest.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_readme_shows_the_latest_full_run():
    """The README's numbers are the committed latest.json's, from a full run where every setup
    got every job back."""
    results = json.loads((RESULTS / "latest.json").read_text())
    assert report.readme_section(results) in README.read_text()
    assert "--quick" not in results["command"]
    assert results["all_completed"] is True
    assert (RESULTS / "latest.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_setup_with_a_missing_job_is_not_done():
    assert all_done({"expected": 3, "completed": 3})
    assert not all_done({"expected": 3, "completed": 2})
    prefect = {"expected": 3, "completed": 3, "task_runs_in_prefect_api": 3}
    assert all_done({**prefect, "completed_in_prefect_api": 3})
    assert not all_done({**prefect, "completed_in_prefect_api": 2})


def test_counts_can_be_chosen():
    _, config = parse_args(["--quick", "--n", "7"])
    assert (config.noops, config.pauses, config.requests_per_client) == (7, 10, 1)
    _, config = parse_args([])
    assert (config.noops, config.concurrency, config.clients) == (200, 10, 20)


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
