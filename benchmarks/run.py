"""Run the benchmark sections, print them with their goals, and save the results.

Usage (from the repository root): ``python -m benchmarks [--quick] [--only overhead,scale]``.
Results go to ``benchmarks/results/<date>.json`` and ``latest.json`` (``<date>-quick.json`` and
``latest-quick.json`` with ``--quick``), and a README-ready table to ``<date>[-quick].md``. A full
run also redraws the charts in ``docs/img/benchmarks/`` (``benchmarks.plots``, needs matplotlib).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import batch_scale, imports, overhead, polling, scale
from ._common import machine_info, pin_client

RESULTS = Path(__file__).resolve().parent / "results"
Section = tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], list[str]]]
SECTIONS: dict[str, Section] = {
    "overhead": (overhead.run, overhead.report),
    "polling": (polling.run, polling.report),
    "scale": (scale.run, scale.report),
    "imports": (imports.run, imports.report),
    "batch": (batch_scale.run, batch_scale.report),
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; return 0 (missed goals are reported, not failures)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds, scale capped at 10k tasks"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections to run"
    )
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")

    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    if args.only != ",".join(SECTIONS):
        command += f" --only {args.only}"
    now = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()
    machine["pinning"] = pin_client()
    print(f"{command}  ({now:%Y-%m-%d %H:%M} UTC)")
    print(
        f"{machine['cpu_model']}, {machine['cores']} cores, {machine['platform']}, "
        f"{machine['python']}, aiohttp {machine['aiohttp']}, httpx {machine['httpx']}; "
        f"pinning: {machine['pinning']}\n",
        flush=True,
    )
    results: dict[str, Any] = {}
    for name in chosen:
        run, report = SECTIONS[name]
        started = time.perf_counter()
        results[name] = run(quick=args.quick)
        results[name]["section_seconds"] = time.perf_counter() - started
        print("\n".join(report(results[name])))
        print(f"   ({results[name]['section_seconds']:.0f} s)\n", flush=True)

    goals = [(name, g) for name in chosen for g in results[name]["goals"]]
    missed = [f"{name}: {g['goal']}" for name, g in goals if g["result"] != "PASS"]
    print(f"Goals: {len(goals) - len(missed)}/{len(goals)} met")
    for line in missed:
        print(f"  MISSED {line}")

    document = {
        "date": now.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "sections": results,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = f"{now:%Y-%m-%d}" + ("-quick" if args.quick else "")
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
        (RESULTS / f"{stem}.json").write_text(text)
        latest = "latest-quick.json" if args.quick else "latest.json"
        (RESULTS / latest).write_text(text)
        (RESULTS / f"{stem}.md").write_text(markdown(document))
        print(f"\nSaved benchmarks/results/{stem}.json, {latest} and {stem}.md")
        if not args.quick:
            draw_charts(document)
    return 0


def draw_charts(document: dict[str, Any]) -> None:
    """Redraw the charts of a full run, or say how to get them without matplotlib."""
    try:
        import matplotlib  # noqa: F401 - only probing for the bench extra
    except ImportError:
        print("No charts: pip install -e '.[bench]', then python -m benchmarks.plots")
        return
    from . import plots

    for path in plots.draw(document, plots.DEFAULT_OUT):
        print(f"Drew {path.relative_to(plots.ROOT)}")


def markdown(document: dict[str, Any]) -> str:
    """A README-ready table of the headline numbers."""
    machine = document["machine"]
    sections = document["sections"]
    rows: list[tuple[str, str, str]] = []
    if "overhead" in sections:
        o = sections["overhead"]
        c = o["contenders"]
        cells = ", ".join(f"{name} {row['cpu_us_per_task']:.0f}" for name, row in c.items())
        ratios = "; ".join(
            f"{name} vs {overhead.BASELINES.get(name, 'aiohttp loop')}: CPU "
            f"{r['cpu_vs_aiohttp']:.2f}x, wall {r['wall_vs_aiohttp']:.2f}x, httpx "
            f"{r['httpx_cpu_vs_ours']:.1f}x slower"
            for name, r in o["ratios"].items()
        )
        rows.append(
            (
                f"Overhead, {o['tasks']:,} tasks, 64 in flight (CPU us/task)",
                f"{cells}; {ratios}",
                "<= 1.0x the aiohttp loop (wall and CPU); >= 10x faster than httpx",
            )
        )
    if "polling" in sections:
        t = sections["polling"]["table"]
        for workload in t:
            a, f5, f1 = (
                t[workload]["adaptive"],
                t[workload]["fixed 0.5 s"],
                t[workload]["fixed 1 s"],
            )
            rows.append(
                (
                    f"Polling, {workload} progress (polls/task, p50/p95 latency s)",
                    f"adaptive {a['polls_per_task']:.2f}, {a['p50']:.2f}/{a['p95']:.2f}; "
                    f"fixed 0.5 s {f5['polls_per_task']:.1f}, {f5['p50']:.2f}/{f5['p95']:.2f}; "
                    f"fixed 1 s {f1['polls_per_task']:.1f}, {f1['p50']:.2f}/{f1['p95']:.2f}",
                    {
                        "smooth": "<= 2.0 polls/task; p50 <= 0.7x, p95 <= fixed 0.5 s",
                        "stuck": "no worse than fixed 1 s",
                    }.get(workload, "-"),
                )
            )
    if "scale" in sections:
        s = sections["scale"]
        cells = "; ".join(
            f"{int(n):,}: {row['cpu_us_per_task']:.0f} us CPU, {row['rss_bytes_per_task']:.0f} B, "
            f"{row['peak_sockets']} sockets"
            for n, row in s["sizes"].items()
        )
        rows.append(
            (
                "Scale (CPU/task, RSS/tracked task, peak sockets)",
                cells,
                "CPU flat within 20%; <= 2 KB/task; sockets <= 64",
            )
        )
    if "batch" in sections:
        b = sections["batch"]["rows"]
        cells = "; ".join(
            f"{row['n']:,} gallery {'on' if row['gallery'] else 'off'}: "
            f"{row['cpu_ms_per_task']:.2f} ms CPU, {row['rss_peak_bytes_per_item']:.0f} B"
            for row in b.values()
        )
        rows.append(
            (
                "Batch (journal, downloads, gallery; CPU/task, peak RSS/item)",
                cells,
                "CPU at 100k within 20% of 1k; <= 1.5 KB/item at 100k, gallery on",
            )
        )
    if "imports" in sections:
        i = sections["imports"]
        rows.append(
            (
                "Import time",
                f"nanobanana_async {i['nanobanana_async_ms']:.0f} ms vs aiohttp "
                f"{i['aiohttp_ms']:.0f} ms ({i['ratio']:.2f}x)",
                "-",
            )
        )
    verdicts = {
        g["goal"]: g["result"] for section in sections.values() for g in section.get("goals", [])
    }
    met = sum(1 for v in verdicts.values() if v == "PASS")
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['platform']}, "
        f"{machine['python']}, aiohttp {machine['aiohttp']}, httpx {machine['httpx']}.  ",
        f"Command: `{document['command']}`, {document['date'][:10]}. Goals met: {met}/{len(verdicts)}.",
        "",
        "| Benchmark | Result | Goal |",
        "|---|---|---|",
        *(f"| {name} | {result} | {goal} |" for name, result, goal in rows),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
