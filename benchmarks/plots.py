"""Charts of a benchmark run, drawn from its results JSON (needs the ``bench`` extra: matplotlib).

Usage (from the repository root): ``python -m benchmarks.plots [RESULTS.json] [--out DIR]``.
By default it redraws ``docs/img/benchmarks/*.png`` from ``benchmarks/results/latest.json``;
``python -m benchmarks`` calls it after a full run. One chart per section present in the run:

- ``overhead.png``: client CPU per task, ours against the hand-written aiohttp and httpx loops;
- ``polling.png``: polls per task and detection latency, adaptive against fixed intervals;
- ``scale.png``: CPU and memory per tracked task from 1,000 to 100,000 tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
DEFAULT_OUT = ROOT / "docs" / "img" / "benchmarks"

# One colour per contender, the same in every chart; ours first.
OURS = "#d99a00"
OURS_REMOTE = "#f2c14e"
OTHER = ("#4c72b0", "#8172b2", "#937860")
DPI = 100


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("charts need matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "svg.hashsalt": "nanobanana",
        }
    )
    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    # No "Software" stamp, so a redraw of the same numbers gives the same bytes.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _subtitle(document: dict[str, Any]) -> str:
    m = document["machine"]
    return f"{document['command']}, {document['date'][:10]}; {m['cores']} cores, {m['python']}"


def overhead_chart(plt: Any, document: dict[str, Any], path: Path) -> Path:
    """Client CPU per task of each contender (log scale: httpx is an order of magnitude off)."""
    section = document["sections"]["overhead"]
    names = list(section["contenders"])
    values = [section["contenders"][n]["cpu_us_per_task"] for n in names]
    colours = [
        OURS if n == "nanobanana_async" else OURS_REMOTE if n.startswith("ours") else OTHER[i % 3]
        for i, n in enumerate(names)
    ]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    bars = ax.barh(names[::-1], values[::-1], color=colours[::-1])
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 2, max(values) * 3)
    ax.bar_label(bars, labels=[f"{v:,.0f} µs" for v in values[::-1]], padding=3)
    ax.set_xlabel("client CPU per task (µs, log scale; lower is better)")
    ax.grid(axis="y", visible=False)
    ax.set_title(
        f"Overhead: {section['tasks']:,} tasks, {section['in_flight']} in flight\n"
        + _subtitle(document),
        fontsize=9,
    )
    return _save(fig, path)


def polling_chart(plt: Any, document: dict[str, Any], path: Path) -> Path:
    """Polls per task and p50/p95 detection latency per workload and poller."""
    section = document["sections"]["polling"]
    table = section["table"]
    workloads = list(table)
    pollers = list(table[workloads[0]])
    colours = {p: (OURS if p == "adaptive" else OTHER[i % 3]) for i, p in enumerate(pollers)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    width = 0.8 / len(pollers)
    for i, poller in enumerate(pollers):
        xs = [w + (i - (len(pollers) - 1) / 2) * width for w in range(len(workloads))]
        polls = [table[w][poller]["polls_per_task"] for w in workloads]
        bars = left.bar(xs, polls, width, label=poller, color=colours[poller])
        left.bar_label(bars, labels=[f"{v:.0f}" for v in polls], fontsize=7, padding=1)
        p50 = [table[w][poller]["p50"] for w in workloads]
        p95 = [table[w][poller]["p95"] for w in workloads]
        right.bar(xs, p95, width, color=colours[poller], alpha=0.35)
        right.bar(xs, p50, width, color=colours[poller], label=poller)
    for ax in (left, right):
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_xlabel("progress behaviour of the tasks")
        ax.grid(axis="x", visible=False)
    left.set_ylim(0, max(table[w][p]["polls_per_task"] for w in workloads for p in pollers) * 1.4)
    left.set_ylabel("polls per task (lower is better)")
    right.set_ylabel("detection latency, API s\n(solid p50, pale p95)")
    left.legend(frameon=False, fontsize=8, ncols=len(pollers), loc="upper center")
    fig.suptitle(
        f"Polling: {section['model']}, {section['tasks_per_run']} tasks per run\n"
        + _subtitle(document),
        fontsize=9,
    )
    return _save(fig, path)


def scale_chart(plt: Any, document: dict[str, Any], path: Path) -> Path:
    """CPU and resident memory per tracked task against the number of tasks."""
    section = document["sections"]["scale"]
    sizes = sorted(section["sizes"], key=int)
    tasks = [int(n) for n in sizes]
    cpu = [section["sizes"][n]["cpu_us_per_task"] for n in sizes]
    rss = [section["sizes"][n]["rss_bytes_per_task"] for n in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8))
    for ax, values, label, unit in (
        (left, cpu, "client CPU per task (µs)", "µs"),
        (right, rss, "memory per tracked task (B, RSS)", "B"),
    ):
        ax.plot(tasks, values, marker="o", color=OURS)
        for x, y in zip(tasks, values, strict=True):
            ax.annotate(
                f"{y:,.0f} {unit}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.set_xlim(tasks[0] / 2, tasks[-1] * 2)
        ax.set_xticks(tasks, [f"{t:,}" for t in tasks])
        ax.set_ylim(0, max(values) * 1.3)
        ax.set_xlabel("tasks tracked at once")
        ax.set_ylabel(label)
    fig.suptitle("Scale: cost per task from 1k to 100k tasks\n" + _subtitle(document), fontsize=9)
    return _save(fig, path)


CHARTS = {"overhead": overhead_chart, "polling": polling_chart, "scale": scale_chart}


def draw(document: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw a chart for each charted section of *document* into *out_dir*; return the paths."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, chart in CHARTS.items():
        if name in document["sections"]:
            written.append(chart(plt, document, out_dir / f"{name}.png"))
            plt.close("all")
    return written


def main(argv: list[str] | None = None) -> int:
    """Redraw the charts from a results file."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    document = json.loads(args.results.read_text())
    for path in draw(document, args.out):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
