"""The benchmark command runs end to end: every setup gets every job back, and the table, the
JSON and the chart are written. No speed is asserted: on a shared machine that is noise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import cpu, report
from benchmarks.measure import percentile
from benchmarks.run import (
    README,
    RESULTS,
    SETUPS,
    all_done,
    haproxy,
    parse_args,
    postgres_installed,
)
from tutorial.runner import ROOT

QUICK = {"noop": 10, "pause": 10}
CLIENTS = 10
PHASE_KEYS = {
    *("submit_ms_p50", "submit_ms_p99", "submits_per_s", "e2e_s", "tasks_per_s"),
    *("queue_ms_p50", "queue_ms_p95"),
}
API_KEYS = {"post_ms_p50", "post_ms_p99", "health_ms_p99"}
# The processes whose CPU each phase counts, by setup: the submitter or the HTTP clients, the
# workers, the app in the API phase, and each setup's servers.
SERVERS = {
    "naive": {"Prefect server"},
    "recommended": {"Prefect server", "PostgreSQL"},
    "celery": {"Redis"},
    "arq": {"Redis"},
    "replicas-1": {"Prefect server", "balancer", "PostgreSQL", "Redis"},
    "replicas-2": {"Prefect server", "balancer", "PostgreSQL", "Redis"},
}


def test_quick_run_completes_every_job_in_every_setup(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    if postgres_installed() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    if haproxy() is None:
        pytest.skip("HAProxy is not installed (Debian: apt-get install haproxy)")
    out = tmp_path / "results"
    command = [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "jobs completed / submitted" in run.stdout

    results = json.loads((out / "latest.json").read_text())
    names = ["naive", "recommended", "celery", "arq", "replicas-1", "replicas-2"]
    assert list(results["setups"]) == list(SETUPS) == names
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
            assert_cpu_counted(report["cpu_ms_per_job"], {"submitter", "workers"} | SERVERS[name])
        api = setup["api"]
        assert api["requests"] == api["accepted"] == api["completed"] == CLIENTS, (name, api)
        assert all(api[key] is not None for key in API_KEYS), (name, api)
        roles = {"HTTP clients", "app", "workers"} | SERVERS[name]
        assert_cpu_counted(api["cpu_ms_per_job"], roles)
        jobs = sum(QUICK.values()) + CLIENTS
        assert setup["completions"]["expected"] == setup["completions"]["completed"] == jobs
        if name not in ("celery", "arq"):
            # Prefect's own record agrees: every run it holds is Completed.
            counts = setup["prefect_api"]
            assert counts["task_runs"] == counts["completed"] == jobs, (name, counts)
        if name.startswith("replicas-"):
            # Each API process created runs, and so queued some for its own task servers.
            created = setup["prefect_api"]["created_per_api_process"]
            assert len(created) == int(name.removeprefix("replicas-")), created
            assert sum(created) == jobs and all(created), created

    # The two replicas setups side by side: a ratio for every row of the table.
    header, _, *rows = results["table"].split("\n\n")[0].splitlines()
    assert header.rstrip().endswith("2 APIs/1 API"), header
    assert all(row.split()[-1].endswith("x") for row in rows[:-1]), rows
    assert "balancer" in results["table"]

    versions = {"python", "prefect", "celery", "arq", "redis-server", "prefect-redis", "haproxy"}
    assert versions <= set(results["versions"])
    assert {"cpus", "cpu_model"} <= set(results["machine"])
    assert len(results["load_average_start"]) == len(results["load_average_end"]) == 3
    assert (out / "latest.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def assert_cpu_counted(costs: dict, roles: set[str]) -> None:
    """Every process of the setup was read, and something was spent."""
    assert set(costs) == roles | {"total"}, costs
    assert costs["total"] > 0, costs
    assert costs["total"] == pytest.approx(sum(costs.values()) - costs["total"], abs=0.1), costs


# A parent whose child burns 0.5 s of CPU, then waits to be killed and reaped.
CHILD = (
    "import time\nwhile time.process_time() < 0.5: pass\nprint('burnt', flush=True)\ntime.sleep(60)"
)
BURN = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
sys.stdin.readline()
child.kill()
child.wait()
print("reaped", flush=True)
sys.stdin.readline()
"""


def test_cpu_of_a_process_tree_counts_its_children_alive_and_reaped():
    parent = subprocess.Popen(
        [sys.executable, "-c", BURN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout.readline().strip() == "burnt"
        # The child burnt 0.5 s of CPU and still runs: it is counted as a descendant. /proc
        # counts whole clock ticks, and may be a tick short of what the child measured.
        alive = cpu.tree_seconds(parent.pid)
        assert alive >= 0.5 - 1 / cpu.TICKS
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        # Reaped, its CPU moved into the parent's count of the children it waited for.
        assert cpu.tree_seconds(parent.pid) >= alive
        meter = cpu.Meter({"task-server-1": parent.pid, "redis": os.getpid()})
        assert set(meter.read()) == {"workers", "Redis"}
    finally:
        parent.kill()
        parent.wait()


def test_every_process_of_step_12s_topology_has_its_role():
    for label in ("prefect-server", "prefect-server-1", "prefect-server-2", "prefect-services"):
        assert cpu.role(label) == "Prefect server", label
    assert cpu.role("haproxy") == "balancer"
    assert {cpu.role(label) for label in ("redis", "postgres")} == {"Redis", "PostgreSQL"}
    assert {"balancer", "Prefect server", "PostgreSQL", "Redis"} <= set(report.ROLES)


def test_cpu_per_job_is_what_each_role_spent_between_two_readings():
    before = {"workers": 1.0, "Prefect server": 2.0}
    after = {"workers": 1.5, "Prefect server": 3.0}
    costs = cpu.per_job(before, after, 10)
    assert costs == {"Prefect server": 100.0, "workers": 50.0, "total": 150.0}
    assert cpu.per_job(before, after, 0) == {}


def a_round(naive_rate: float, recommended_rate: float, cpu_ms: float) -> dict:
    def setup(label: str, rate: float) -> dict:
        return {
            "label": label,
            "load_average_before": [1.0, 1.0, 1.0],
            "load_average_after": [2.0, 2.0, 2.0],
            "seconds": 10.0,
            "error": None,
            "ok": True,
            "completions": {"expected": 5, "completed": 5},
            "noop": {"job": "noop", "tasks_per_s": rate, "errors": []},
            "pause": {"job": "pause", "cpu_ms_per_job": {"workers": cpu_ms, "total": cpu_ms}},
        }

    return {"naive": setup("naive", naive_rate), "recommended": setup("rec", recommended_rate)}


def test_rounds_combine_into_medians_and_ratios_into_their_median_and_range():
    rounds = [a_round(10, 30, 4.0), a_round(20, 40, 6.0), a_round(5, 30, 5.0)]
    combined = report.combine(rounds)
    naive = combined["naive"]
    assert naive["noop"]["tasks_per_s"] == 10  # the median of 10, 20, 5
    assert naive["pause"]["cpu_ms_per_job"] == {"workers": 5.0, "total": 5.0}
    assert naive["completions"] == {"expected": 15, "completed": 15}
    assert (naive["seconds"], naive["ok"], naive["rounds"]) == (30.0, True, 3)
    # Ratios are taken round by round (3x, 2x, 6x), not between the medians (40/10 = 4x).
    cell = report.ratio_cell(rounds, "recommended", "naive", "noop", "tasks_per_s")
    assert cell == "3.00x (2.00-6.00x)"
    assert report.ratio_cell(rounds[:1], "recommended", "naive", "noop", "tasks_per_s") == "3.00x"
    assert report.combine(rounds[:1]) is rounds[0]


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
