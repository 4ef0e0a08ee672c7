"""Section 2: polls per task and completion-detection latency, adaptive against fixed polling.

Server: the emulator (`benchmarks.emulator_server`) in a child process, time-scaled by SPEED;
every client policy gets `speed=SPEED`, so all intervals shrink alike, and latencies are scaled
back to API seconds. Workloads: nano-banana 1K (8-20 s tasks) with smooth, stuck and jumpy
progress. The fixed pollers are the same client with a constant interval
(`PollPolicy(initial_delay=i, min_interval=i, max_interval=i, jitter=0)`), so only the timing
policy differs.

Run alone: ``python -m benchmarks.polling [--tasks N] [--rounds R]`` prints the table and goals
and saves nothing (it is also section 2 of ``python -m benchmarks``).

Detection latency = `time.monotonic()` in the client when `Task.wait()` returned, minus the
task's real end time (reported by the child from `EmulatedTask.end_time`; the monotonic clock is
system-wide on Linux). Polls per task are counted by the emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import nanobanana_async as nb

from ._common import ServerProcess, median, percentile, pin_client, verdict

SPEED = 25.0
PROMPT = "a banana cat"
WORKLOADS = ("smooth", "stuck", "jumpy")


def policies() -> dict[str, nb.PollPolicy]:
    """The pollers compared, all scaled by SPEED."""
    return {
        "adaptive": nb.PollPolicy(speed=SPEED),
        "fixed 0.5 s": nb.PollPolicy(
            initial_delay=0.5, min_interval=0.5, max_interval=0.5, jitter=0.0, speed=SPEED
        ),
        "fixed 1 s": nb.PollPolicy(
            initial_delay=1.0, min_interval=1.0, max_interval=1.0, jitter=0.0, speed=SPEED
        ),
    }


async def _run_tasks(
    base_url: str, api_key: str, policy: nb.PollPolicy, tasks: int, in_flight: int, seed: int
) -> dict[str, float]:
    """Run *tasks* generations, *in_flight* at a time; return when each was seen terminal."""
    seen: dict[str, float] = {}
    todo = iter(range(tasks))
    async with nb.Client(
        api_key, base_url=base_url, max_concurrency=in_flight, poll=policy, seed=seed
    ) as client:

        async def worker() -> None:
            for _ in todo:
                task = await client.submit(PROMPT, model="nano-banana")
                await task.wait()
                seen[task.id] = time.monotonic()

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return seen


def _one(
    server: ServerProcess,
    workload: str,
    policy: nb.PollPolicy,
    seed: int,
    tasks: int,
    in_flight: int,
) -> dict[str, float]:
    emu = server.post("/reset", {"speed": SPEED, "progress": workload, "seed": seed})
    seen = asyncio.run(_run_tasks(emu["base_url"], emu["api_key"], policy, tasks, in_flight, seed))
    rows = server.get("/tasks")["tasks"]
    latencies = [(seen[row["id"]] - row["end_real"]) * SPEED for row in rows]
    server_side = [row["server_latency"] for row in rows if row["server_latency"] is not None]
    return {
        "polls_per_task": sum(row["polls"] for row in rows) / len(rows),
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "server_p50": percentile(server_side, 50),
        "tasks": len(rows),
    }


def run(*, quick: bool, tasks: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    """Run the section and return its results."""
    tasks = tasks or 200
    in_flight = 16
    rounds = rounds or (1 if quick else 3)
    table: dict[str, dict[str, Any]] = {}
    with ServerProcess("benchmarks.emulator_server") as server:
        _one(server, "smooth", policies()["adaptive"], 0, 8, 8)  # warm-up
        for workload in WORKLOADS:
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in policies()}
            for seed in range(1, rounds + 1):
                for name, policy in policies().items():
                    samples[name].append(_one(server, workload, policy, seed, tasks, in_flight))
            table[workload] = {
                name: {
                    key: median([s[key] for s in runs])
                    for key in ("polls_per_task", "p50", "p95", "server_p50")
                }
                for name, runs in samples.items()
            }
    smooth, stuck = table["smooth"], table["stuck"]
    adaptive, fixed = smooth["adaptive"], smooth["fixed 0.5 s"]
    poll_ratio = adaptive["polls_per_task"] / fixed["polls_per_task"]
    p50_ratio = adaptive["p50"] / fixed["p50"]
    goals = [
        {
            "goal": "smooth: polls per task <= 2.0",
            "value": round(adaptive["polls_per_task"], 2),
            "target": "<= 2.0",
            "result": verdict(adaptive["polls_per_task"] <= 2.0),
        },
        {
            "goal": "smooth: p50 latency <= 0.7x fixed 0.5 s",
            "value": f"{adaptive['p50']:.3f} vs {fixed['p50']:.3f} s ({p50_ratio:.2f}x)",
            "target": "<= 0.7x",
            "result": verdict(p50_ratio <= 0.7),
        },
        {
            "goal": "smooth: p95 latency <= fixed 0.5 s",
            "value": f"{adaptive['p95']:.3f} vs {fixed['p95']:.3f} s",
            "target": "<=",
            "result": verdict(adaptive["p95"] <= fixed["p95"]),
        },
        {
            "goal": "stuck: polls <= fixed 1 s",
            "value": f"{stuck['adaptive']['polls_per_task']:.2f} vs "
            f"{stuck['fixed 1 s']['polls_per_task']:.2f}",
            "target": "<=",
            "result": verdict(
                stuck["adaptive"]["polls_per_task"] <= stuck["fixed 1 s"]["polls_per_task"]
            ),
        },
        {
            "goal": "stuck: p50 latency <= fixed 1 s",
            "value": f"{stuck['adaptive']['p50']:.3f} vs {stuck['fixed 1 s']['p50']:.3f} s",
            "target": "<=",
            "result": verdict(stuck["adaptive"]["p50"] <= stuck["fixed 1 s"]["p50"]),
        },
    ]
    return {
        "server": f"emulator (benchmarks.emulator_server, subprocess), speed {SPEED:g}x",
        "model": "nano-banana 1K (8-20 s)",
        "tasks_per_run": tasks,
        "in_flight": in_flight,
        "rounds": rounds,
        "table": table,
        "smooth_poll_ratio_vs_fixed_0_5": poll_ratio,
        "smooth_p50_ratio_vs_fixed_0_5": p50_ratio,
        "goals": goals,
    }


def report(result: dict[str, Any]) -> list[str]:
    """Lines to print for this section."""
    lines = [
        f"2. Polling: {result['model']}, {result['tasks_per_run']} tasks/run, "
        f"{result['in_flight']} in flight, median of {result['rounds']} rounds; "
        f"server: {result['server']}; latency in API seconds",
        f"   {'workload':<9}{'poller':<13}{'polls/task':>11}{'p50 s':>8}{'p95 s':>8}",
    ]
    for workload, rows in result["table"].items():
        for name, row in rows.items():
            lines.append(
                f"   {workload:<9}{name:<13}{row['polls_per_task']:>11.2f}"
                f"{row['p50']:>8.3f}{row['p95']:>8.3f}"
            )
    lines.append(
        f"   smooth: adaptive polls = {result['smooth_poll_ratio_vs_fixed_0_5']:.2f}x fixed 0.5 s, "
        f"p50 latency = {result['smooth_p50_ratio_vs_fixed_0_5']:.2f}x fixed 0.5 s"
    )
    lines += [
        f"   [{g['result']}] {g['goal']}: {g['value']} ({g['target']})" for g in result["goals"]
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run this section alone and print it; save nothing."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.polling", description=__doc__)
    parser.add_argument("--tasks", type=int, default=200, help="tasks per run (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, median kept (default 3)")
    args = parser.parse_args(argv)
    print(f"pinning: {pin_client()}", flush=True)
    result = run(quick=False, tasks=args.tasks, rounds=args.rounds)
    print("\n".join(report(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
