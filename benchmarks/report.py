"""The results as a plain-text table and as a chart."""

from __future__ import annotations

import statistics
from pathlib import Path

# (label, phase, key, unit): `phase` is noop, pause or api; {n}, {pauses}, {clients} are
# filled in from the run's config.
METRICS = [
    ("submit p50", "noop", "submit_ms_p50", "ms"),
    ("submit p99", "noop", "submit_ms_p99", "ms"),
    ("submissions per second", "noop", "submits_per_s", "/s"),
    ("{n} no-ops, first submit to last result", "noop", "e2e_s", "s"),
    ("{n} no-ops, end-to-end throughput", "noop", "tasks_per_s", "/s"),
    ("queue latency p50", "noop", "queue_ms_p50", "ms"),
    ("queue latency p95", "noop", "queue_ms_p95", "ms"),
    ("{pauses} x 50 ms jobs, 10 slots: throughput", "pause", "tasks_per_s", "/s"),
    ("POST /jobs p50, {clients} clients", "api", "post_ms_p50", "ms"),
    ("POST /jobs p99, {clients} clients", "api", "post_ms_p99", "ms"),
    ("/health p99 meanwhile", "api", "health_ms_p99", "ms"),
    ("no-ops: CPU per job, all processes", "noop", "cpu_ms_per_job.total", "ms"),
    ("50 ms jobs: CPU per job, all processes", "pause", "cpu_ms_per_job.total", "ms"),
    ("API jobs: CPU per job, all processes", "api", "cpu_ms_per_job.total", "ms"),
]
PHASES = {"noop": "no-ops", "pause": "50 ms jobs", "api": "API jobs"}
ROLES = [
    *("submitter", "HTTP clients", "app", "workers", "Prefect server", "balancer"),
    *("PostgreSQL", "Redis"),
]
RATIOS = [
    *(("recommended", "naive"), ("prefect", "celery"), ("prefect", "arq")),
    ("replicas-2", "replicas-1"),
]


def value(setup: dict, phase: str, key: str) -> float | None:
    """A phase's number; "cpu_ms_per_job.total" reads one entry of a dict."""
    found = setup.get(phase) or {}
    for part in key.split("."):
        found = found.get(part) if isinstance(found, dict) else None
    return found


def fmt(number: float | None) -> str:
    if number is None:
        return "-"
    if abs(number) >= 100:
        return f"{number:,.0f}"
    if abs(number) >= 10:
        return f"{number:.1f}"
    return f"{number:.2f}"


def _ratio_text(r: float, unit: str = "x") -> str:
    """2.69x; the low end of a range goes without its unit (2.1-3.9x)."""
    if r >= 100:
        return f"{r:,.0f}{unit}"
    return f"{r:.1f}{unit}" if r >= 10 else f"{r:.2f}{unit}" if r >= 0.1 else f"{r:.2g}{unit}"


def combine(rounds: list[dict]) -> dict:
    """Several rounds of the same setups as one: each number the median of its rounds, the
    jobs counted over all of them. One round is returned as it is."""
    if len(rounds) == 1:
        return rounds[0]
    combined = {}
    for name, first in rounds[0].items():
        runs = [r[name] for r in rounds if name in r]
        setup = {**first, "rounds": len(runs)}
        setup["load_average_after"] = runs[-1]["load_average_after"]
        setup["seconds"] = round(sum(r["seconds"] for r in runs), 1)
        setup["error"] = next((r["error"] for r in runs if r["error"]), None)
        setup["ok"] = all(r["ok"] for r in runs)
        setup["completions"] = {
            key: sum(r["completions"].get(key, 0) for r in runs) for key in first["completions"]
        }
        for phase in PHASES:
            if phase in first:
                setup[phase] = _medians([r.get(phase) or {} for r in runs])
        if "prefect_api" in first:
            locked = sum(r["prefect_api"]["sqlite_locked_errors"] for r in runs)
            setup["prefect_api"] = {**first["prefect_api"], "sqlite_locked_errors": locked}
            if "created_per_api_process" in first["prefect_api"]:
                per_round = [r.get("prefect_api", {}).get("created_per_api_process") for r in runs]
                setup["prefect_api"]["created_per_api_process"] = [
                    sum(counts) for counts in zip(*filter(None, per_round), strict=True)
                ]
        combined[name] = setup
    return combined


def _medians(reports: list[dict]) -> dict:
    """The median of each number (and of each number in a dict, as CPU per role)."""
    medians = {}
    for key, first in reports[0].items():
        values = [r.get(key) for r in reports]
        if isinstance(first, dict):
            medians[key] = _medians([v if isinstance(v, dict) else {} for v in values])
        elif isinstance(first, list):  # errors: all of them
            medians[key] = [item for v in values for item in (v or [])]
        elif isinstance(first, int | float) and not isinstance(first, bool):
            numbers = [v for v in values if isinstance(v, int | float)]
            medians[key] = round(statistics.median(numbers), 2) if numbers else None
        else:
            medians[key] = first
    return medians


def ratio_cell(rounds: list[dict], a: str, b: str, phase: str, key: str) -> str:
    """One ratio per round: its median, and its range when there are several rounds."""
    pairs = [(value(r[a], phase, key), value(r[b], phase, key)) for r in rounds]
    ratios = [x / y for x, y in pairs if x and y and x > 0 and y > 0]
    if not ratios:
        return "-"
    middle = _ratio_text(statistics.median(ratios))
    if len(rounds) == 1:
        return middle
    return f"{middle} ({_ratio_text(min(ratios), '')}-{_ratio_text(max(ratios))})"


def table(results: dict) -> str:
    setups = results["setups"]
    rounds = [r["setups"] for r in results.get("rounds", [])] or [setups]
    config = results["config"]
    names = list(setups)
    # "Prefect" in the ratios is the recommended setup when it ran, else the naive one.
    prefect = "recommended" if "recommended" in setups else "naive"
    ratios = [
        (a, b)
        for a, b in RATIOS
        if (prefect if a == "prefect" else a) in setups and b in setups and a != b
        if not (a == "recommended" and b == "naive" and prefect != "recommended")
    ]
    header = ["", *(setups[n]["label"] for n in names)]
    names_in_ratios = {"prefect": "Prefect", "recommended": "rec.", "celery": "Celery"}
    names_in_ratios |= {"replicas-1": "1 API", "replicas-2": "2 APIs"}
    header += [f"{names_in_ratios.get(a, a)}/{names_in_ratios.get(b, b)}" for a, b in ratios]
    rows = [header]
    for label, phase, key, unit in METRICS:
        label = label.format(n=config["noops"], pauses=config["pauses"], clients=config["clients"])
        row = [f"{label} ({unit})"]
        row += [fmt(value(setups[n], phase, key)) for n in names]
        for a, b in ratios:
            row.append(ratio_cell(rounds, prefect if a == "prefect" else a, b, phase, key))
        rows.append(row)
    done = ["jobs completed / submitted"]
    for n in names:
        counts = setups[n]["completions"]
        cell = f"{counts['completed']}/{counts['expected']}"
        if "completed_in_prefect_api" in counts:
            cell += f" (API {counts['completed_in_prefect_api']})"
        if setups[n]["error"]:
            cell += " FAILED"
        done.append(cell)
    rows.append(done + [""] * len(ratios))

    lines = aligned(rows)
    lines += ["", *aligned(cpu_rows(setups, names))]
    machine = results["machine"]
    load_start = " ".join(f"{x:.2f}" for x in results["load_average_start"])
    load_end = " ".join(f"{x:.2f}" for x in results["load_average_end"])
    lines.append("")
    lines.append(
        f"{results['started_at']}, {machine['cpus']} x {machine['cpu_model']},"
        f" load average {load_start} at the start, {load_end} at the end"
    )
    lines.append(", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    for name in names:
        created = setups[name].get("prefect_api", {}).get("created_per_api_process")
        if created:
            lines.append(
                f"{setups[name]['label']}: task runs created (and queued) by each API process,"
                f" from HAProxy's log: {', '.join(map(str, created))}"
            )
    for name in names:
        if setups[name]["error"]:
            lines.append(f"{setups[name]['label']} failed: {setups[name]['error']}")
    return "\n".join(lines)


def cpu_rows(setups: dict, names: list[str]) -> list[list[str]]:
    """CPU ms per job by process role, per phase: where each job's CPU goes."""
    rows = [["CPU per job, by process (ms)", *(setups[n]["label"] for n in names)]]
    for phase, phase_label in PHASES.items():
        for name in ROLES:
            cells = [value(setups[n], phase, f"cpu_ms_per_job.{name}") for n in names]
            if any(cell is not None for cell in cells):
                rows.append([f"{phase_label}: {name}", *(fmt(cell) for cell in cells)])
    return rows


def aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    setups = results["setups"]
    config = results["config"]
    names = list(setups)
    colors = {"naive": "#9aa5b1", "recommended": "#1f6feb", "celery": "#3fa34d", "arq": "#d97706"}
    colors |= {"replicas-1": "#8250df", "replicas-2": "#bf3989"}
    figure, axes = plt.subplots(4, 4, figsize=(16, 13), constrained_layout=True)
    for ax, (label, phase, key, unit) in zip(axes.flat, METRICS, strict=False):
        label = label.format(n=config["noops"], pauses=config["pauses"], clients=config["clients"])
        values = [value(setups[n], phase, key) for n in names]
        shown = [v if v is not None and v > 0 else 0 for v in values]  # the label says more
        bars = ax.barh(
            [setups[n]["label"] for n in names], shown, color=[colors.get(n, "grey") for n in names]
        )
        ax.invert_yaxis()
        ax.set_title(f"{label} ({unit})", fontsize=8)
        ax.tick_params(labelsize=8)
        if max(shown, default=0) > 0 and min(v for v in shown if v > 0) * 50 < max(shown):
            ax.set_xscale("log")
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                fmt(v),
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.margins(x=0.25)
    spare = axes.flat[len(METRICS) :]
    for ax, phase in zip(spare, ("noop", "api"), strict=False):
        cpu_by_process(ax, setups, names, phase)
    for ax in spare[2:]:
        ax.axis("off")
    machine = results["machine"]
    load = " ".join(f"{x:.2f}" for x in results["load_average_start"])
    figure.suptitle(
        f"Offloading a job: Prefect {results['versions']['prefect']}, Celery"
        f" {results['versions']['celery']}, arq {results['versions']['arq']}, Redis"
        f" {results['versions']['redis-server']} ({results['started_at']},"
        f" {machine['cpus']} CPUs, load average {load} at the start"
        + (f"; medians of {len(results['rounds'])} rounds)" if results.get("rounds") else ")"),
        fontsize=11,
    )
    figure.savefig(path, dpi=80)
    plt.close(figure)


def cpu_by_process(ax, setups: dict, names: list[str], phase: str) -> None:
    """One phase's CPU per job, each setup's bar split by process role."""
    labels = [setups[n]["label"] for n in names]
    left = [0.0] * len(names)
    for index, role in enumerate(ROLES):
        widths = [value(setups[n], phase, f"cpu_ms_per_job.{role}") or 0 for n in names]
        if any(widths):
            # A role keeps its colour from one chart to the other.
            ax.barh(labels, widths, left=left, label=role, color=f"C{index}")
            left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_title(f"{PHASES[phase]}: CPU per job, by process (ms)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))


BEGIN = "<!-- latest results: written by benchmarks/run.py, do not edit -->"
END = "<!-- end of latest results -->"


def readme_section(results: dict) -> str:
    setups = results["setups"]
    lines = [
        BEGIN,
        f"`{results['command'].strip()}` on {results['started_at']}, {results['seconds']:.0f} s"
        f" in all. Each setup's load average (1, 5, 15 minutes) before and after it ran:",
        "",
    ]
    if rounds := results.get("rounds"):
        lines[1] = (
            f"`{results['command'].strip()}` on {results['started_at']}, {results['seconds']:.0f}"
            f" s in all: {len(rounds)} rounds of every setup. Each number below is the median"
            " of the rounds; each ratio is the median of the rounds' own ratios, with their"
            " range in brackets. Each setup's load average (1, 5, 15 minutes) before its first"
            " round and after its last:"
        )
    for setup in setups.values():
        before = " ".join(f"{x:.2f}" for x in setup["load_average_before"])
        after = " ".join(f"{x:.2f}" for x in setup["load_average_after"])
        line = f"- {setup['label']}: {before} before, {after} after ({setup['seconds']} s"
        if setup.get("prefect_api", {}).get("database") == "sqlite":
            locked = setup["prefect_api"]["sqlite_locked_errors"]
            line += f"; the Prefect server logged {locked} SQLite 'database is locked' errors"
        lines.append(line + ")")
    lines += ["", "```text", results["table"], "```", "", END]
    return "\n".join(lines)


def update_readme(results: dict, readme: Path) -> None:
    """Put the run's table into the README, between the two markers."""
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + readme_section(results) + text[end:])
