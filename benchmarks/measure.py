"""What every submitter reports, computed the same way for Prefect, Celery and arq."""

from __future__ import annotations

import json
import math
import time

from benchmarks import cpu

MARKER = "BENCHMARK-RESULT "


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Recorder:
    """Collects one phase's timings in the submitting process.

    Wall-clock times (time.time) are compared with the start times the task bodies return,
    so they must come from the same machine; durations use perf_counter.
    """

    def __init__(self, job: str, count: int) -> None:
        self.job = job
        self.count = count
        self.call_seconds: list[float] = []  # one per submit call
        self.call_items: list[int] = []  # how many jobs each call submitted
        self.returned_at: list[float] = []  # per job: when its submit call returned
        self.started_at: dict[int, float] = {}  # per job: when its body started
        self.errors: list[str] = []
        self.first_submit = 0.0
        self.last_submit = 0.0
        self.all_back = 0.0
        # The CPU every process of the setup spends on this phase (see benchmarks/cpu.py).
        self.meter = cpu.Meter.from_env("submit")
        self.cpu_before: dict[str, float] = {}
        self.cpu_after: dict[str, float] = {}

    def begin(self) -> None:
        self.cpu_before = self.meter.read()
        self.first_submit = time.time()

    def submitted(self, seconds: float, items: int = 1) -> None:
        now = time.time()
        self.call_seconds.append(seconds)
        self.call_items.append(items)
        self.returned_at.extend([now] * items)
        self.last_submit = now

    def result(self, index: int, body_started: float) -> None:
        self.started_at[index] = body_started

    def error(self, message: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(message)

    def end(self) -> None:
        self.all_back = time.time()
        self.cpu_after = self.meter.read()

    def report(self) -> dict:
        per_job = [s / n for s, n in zip(self.call_seconds, self.call_items, strict=True)]
        queue = [
            (started - self.returned_at[i]) * 1000
            for i, started in self.started_at.items()
            if i < len(self.returned_at)
        ]
        submitting = max(self.last_submit - self.first_submit, 1e-9)
        elapsed = max(self.all_back - self.first_submit, 1e-9)
        completed = len(self.started_at)
        return {
            "job": self.job,
            "submitted": len(self.returned_at),
            "expected": self.count,
            "completed": completed,
            "submit_calls": len(self.call_seconds),
            # Per job: a call that submits k jobs counts k times, at 1/k of its duration.
            "submit_ms_p50": _ms(percentile(per_job, 50)),
            "submit_ms_p99": _ms(percentile(per_job, 99)),
            "submit_call_ms_p50": _ms(percentile(self.call_seconds, 50)),
            "submit_call_ms_p99": _ms(percentile(self.call_seconds, 99)),
            "submits_per_s": round(len(self.returned_at) / submitting, 1),
            "e2e_s": round(elapsed, 3),
            "tasks_per_s": round(completed / elapsed, 1),
            "queue_ms_p50": _round(percentile(queue, 50)),
            "queue_ms_p95": _round(percentile(queue, 95)),
            "queue_ms_max": _round(max(queue, default=None)),
            # CPU ms per job that came back, by process role and in all ("total").
            "cpu_ms_per_job": cpu.per_job(self.cpu_before, self.cpu_after, completed),
            "errors": self.errors,
        }

    def emit(self) -> None:
        print(MARKER + json.dumps(self.report()), flush=True)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def parse(output: str) -> dict[str, dict]:
    """The reports a submitter printed, by job, from its whole output."""
    reports = [
        json.loads(line[len(MARKER) :]) for line in output.splitlines() if line.startswith(MARKER)
    ]
    return {report["job"]: report for report in reports}
