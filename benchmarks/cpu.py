"""CPU time per process tree, read from /proc: what a job costs in CPU, whatever else runs.

Wall-clock numbers move with the machine's load; the CPU seconds a process spends on the same
work move much less. A phase's CPU per job is the CPU every process of the setup spent between
the phase's first submit and its last result, divided by the jobs that came back.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "BENCHMARK_CPU_PIDS"  # "label=pid,label=pid": the setup's processes, for a submitter
TICKS = os.sysconf("SC_CLK_TCK")

# Process labels (as benchmarks/run.py starts them) by what they are, for the report.
ROLES = {
    "prefect-server": "Prefect server",
    "prefect-services": "Prefect server",  # the services of API processes without them
    "haproxy": "balancer",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "submit": "submitter",
    "clients": "HTTP clients",
    "api": "app",
    "step-08-api": "app",
}


def role(label: str) -> str:
    """task-server-1, step-08-task-server-2, celery-worker, arq-worker: all workers;
    prefect-server-1, prefect-server-2 (API processes): the Prefect server."""
    if label in ROLES:
        return ROLES[label]
    if label.startswith("prefect-server-"):
        return ROLES["prefect-server"]
    if "task-server" in label or label.endswith("-worker"):
        return "workers"
    return label


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _seconds(fields: list[str], with_children: bool) -> float:
    # utime, stime (fields 14, 15), then cutime, cstime: the children it has waited for.
    used = int(fields[11]) + int(fields[12])
    if with_children:
        used += int(fields[13]) + int(fields[14])
    return used / TICKS


def tree_seconds(pid: int, children: dict[int, list[int]] | None = None) -> float:
    """CPU seconds of a process, its living descendants and the children they reaped."""
    children = _children() if children is None else children
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if fields := _stat(current):
            total += _seconds(fields, with_children=True)
            todo += children.get(current, [])
    return total


def own_seconds() -> float:
    """This process alone: the HTTP clients of the API phase run in the benchmark's own
    process, whose children are the servers and workers, counted on their own."""
    return _seconds(_stat(os.getpid()) or [], with_children=False)


class Meter:
    """Reads the CPU seconds of labelled process trees, by role."""

    def __init__(self, pids: dict[str, int], self_label: str | None = None) -> None:
        self.pids = pids
        self.self_label = self_label

    @classmethod
    def from_env(cls, self_label: str) -> Meter:
        """The setup's processes, from the environment, and this process's tree."""
        pairs = [item.split("=") for item in os.environ.get(ENV, "").split(",") if item]
        pids = {label: int(pid) for label, pid in pairs}
        pids[self_label] = os.getpid()
        return cls(pids)

    def read(self) -> dict[str, float]:
        children = _children()
        by_role: dict[str, float] = {}
        for label, pid in self.pids.items():
            by_role[role(label)] = by_role.get(role(label), 0.0) + tree_seconds(pid, children)
        if self.self_label:
            by_role[role(self.self_label)] = by_role.get(role(self.self_label), 0) + own_seconds()
        return by_role


def per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """CPU milliseconds per job, by role, and in all ("total")."""
    if jobs <= 0:
        return {}
    used = {name: max(after.get(name, 0.0) - before.get(name, 0.0), 0.0) for name in after}
    costs = {name: round(seconds * 1000 / jobs, 2) for name, seconds in sorted(used.items())}
    costs["total"] = round(sum(used.values()) * 1000 / jobs, 2)
    return costs


def env_for(pids: dict[str, int]) -> dict[str, str]:
    return {ENV: ",".join(f"{label}={pid}" for label, pid in pids.items())}
