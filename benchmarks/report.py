"""The results as a plain-text table and as a chart."""

from __future__ import annotations

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
]
RATIOS = [("recommended", "naive"), ("prefect", "celery"), ("prefect", "arq")]


def value(setup: dict, phase: str, key: str) -> float | None:
    return (setup.get(phase) or {}).get(key)


def fmt(number: float | None) -> str:
    if number is None:
        return "-"
    if abs(number) >= 100:
        return f"{number:,.0f}"
    if abs(number) >= 10:
        return f"{number:.1f}"
    return f"{number:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a <= 0 or b <= 0:
        return "-"
    r = a / b
    if r >= 100:
        return f"{r:,.0f}x"
    return f"{r:.1f}x" if r >= 10 else f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def table(results: dict) -> str:
    setups = results["setups"]
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
    header += [f"{names_in_ratios.get(a, a)}/{names_in_ratios.get(b, b)}" for a, b in ratios]
    rows = [header]
    for label, phase, key, unit in METRICS:
        label = label.format(n=config["noops"], pauses=config["pauses"], clients=config["clients"])
        row = [f"{label} ({unit})"]
        row += [fmt(value(setups[n], phase, key)) for n in names]
        for a, b in ratios:
            a = prefect if a == "prefect" else a
            row.append(ratio(value(setups[a], phase, key), value(setups[b], phase, key)))
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

    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
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
        if setups[name]["error"]:
            lines.append(f"{setups[name]['label']} failed: {setups[name]['error']}")
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    setups = results["setups"]
    config = results["config"]
    names = list(setups)
    colors = {"naive": "#9aa5b1", "recommended": "#1f6feb", "celery": "#3fa34d", "arq": "#d97706"}
    figure, axes = plt.subplots(3, 4, figsize=(16, 10), constrained_layout=True)
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
    axes.flat[-1].axis("off")
    machine = results["machine"]
    load = " ".join(f"{x:.2f}" for x in results["load_average_start"])
    figure.suptitle(
        f"Offloading a job: Prefect {results['versions']['prefect']}, Celery"
        f" {results['versions']['celery']}, arq {results['versions']['arq']}, Redis"
        f" {results['versions']['redis-server']} ({results['started_at']},"
        f" {machine['cpus']} CPUs, load average {load} at the start)",
        fontsize=11,
    )
    figure.savefig(path, dpi=80)
    plt.close(figure)


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
