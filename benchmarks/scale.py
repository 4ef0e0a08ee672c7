"""Section 3: CPU and memory per tracked task, and open sockets, from 1k to 100k tasks.

Server: `benchmarks.fast_server --polls 2` in a child process (a task answers running at its
first poll and succeeded at its second). Each measurement runs the client in a fresh child
process (`python -m benchmarks.scale --child ...`) so that RSS deltas are its own:
64 submitters create N tasks with `max_concurrency=None`; the first poll is delayed until all
are submitted (`PollPolicy(initial_delay=...)`, sized from the previous run's submit rate), so
at the end of the submit phase all N tasks are tracked at once, and memory is read then:
(RSS then - RSS before the client) / tasks tracked. Then every task is awaited. A throwaway
client runs WARM_UP tasks first, so one-time costs (lazy imports, first calls) are not counted.
CPU is `time.process_time()` of the child for the whole run (submit, 2N polls, waits, close).
Sockets: a sampler thread counts the child's TCP sockets to the server port every 0.1 s
(`/proc/self/fd` matched against `/proc/net/tcp`); the connector limit is 64.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from ._common import (
    API_KEY,
    ROOT,
    ServerProcess,
    SocketSampler,
    clock,
    median,
    rss_bytes,
    verdict,
)

PROMPT = "a banana cat"
SUBMITTERS = 64
CONNECTIONS = 64
#: Tasks run by a throwaway client in the child before measuring (lazy imports, first calls).
WARM_UP = 128


async def _warm_up(base_url: str) -> None:
    import nanobanana_async as nb

    async with nb.Client(
        API_KEY, base_url=base_url, max_concurrency=None, poll=nb.PollPolicy(initial_delay=0)
    ) as client:
        await client.map(PROMPT for _ in range(WARM_UP))


async def _child_run(base_url: str, port: int, n: int, delay: float, trace: bool) -> dict[str, Any]:
    import nanobanana_async as nb

    tasks: list[Any] = [None] * n
    todo = iter(range(n))
    result: dict[str, Any] = {}
    with SocketSampler(port, interval=0.1) as sampler:
        async with nb.Client(
            API_KEY,
            base_url=base_url,
            max_concurrency=None,
            max_connections=CONNECTIONS,
            poll=nb.PollPolicy(initial_delay=delay, min_interval=0.05, max_interval=0.25),
        ) as client:

            async def submitter() -> None:
                for i in todo:
                    tasks[i] = await client.submit(PROMPT)

            started = time.perf_counter()
            await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
            submitted = time.perf_counter()
            result["submit_rate"] = n / (submitted - started)
            result["tracked"] = client.in_flight
            result["rss_tracked"] = rss_bytes()
            if trace:
                snapshot = tracemalloc.take_snapshot()
                result["traced_tracked"] = tracemalloc.get_traced_memory()[0]
                result["top_allocations"] = [
                    f"{stat.traceback[0].filename.split('site-packages/')[-1]}:"
                    f"{stat.traceback[0].lineno} {stat.size / max(1, client.in_flight):.0f} B/task"
                    for stat in snapshot.statistics("lineno")[:8]
                ]
            for task in tasks:
                await task.wait()
            result["finished"] = sum(1 for task in tasks if task.done())
    result["peak_sockets"] = sampler.peak
    result["peak_fds"] = sampler.peak_fds
    result["socket_samples"] = sampler.samples
    return result


def child_main(argv: list[str]) -> None:
    """Entry point of the measuring child process; prints one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(_warm_up(args.base_url))
    gc.collect()
    if args.trace:
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
    rss0 = rss_bytes()
    wall0, cpu0 = clock()
    result = asyncio.run(_child_run(args.base_url, args.port, args.n, args.delay, args.trace))
    wall1, cpu1 = clock()
    result.update(
        n=args.n,
        wall=wall1 - wall0,
        cpu=cpu1 - cpu0,
        rss_before=rss0,
        rss_per_task=(result["rss_tracked"] - rss0) / max(1, result["tracked"]),
    )
    if args.trace:
        result["traced_per_task"] = (result["traced_tracked"] - traced0) / max(1, result["tracked"])
    print(json.dumps(result), flush=True)


def _measure(server: ServerProcess, n: int, delay: float, trace: bool = False) -> dict[str, Any]:
    server.post("/_reset")
    argv = [
        sys.executable,
        "-m",
        "benchmarks.scale",
        "--child",
        f"--base-url={server.base_url}",
        f"--port={server.ports[0]}",
        f"--n={n}",
        f"--delay={delay}",
    ]
    if trace:
        argv.append("--trace")
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scale child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    stats = server.get("/_stats")
    creates, polls = n + WARM_UP, 2 * (n + WARM_UP)
    if (
        stats["creates"] != creates
        or stats["polls"] != polls
        or stats["bad"]
        or result["finished"] != n
    ):
        raise RuntimeError(f"unexpected traffic for {n} tasks: {stats}")
    result["server_connections"] = stats["connections"]
    result["server_max_open_connections"] = stats["max_open_connections"]
    return result


def run(
    *, quick: bool, sizes: list[int] | None = None, rounds: int | None = None
) -> dict[str, Any]:
    """Run the section and return its results."""
    sizes = sizes or ([1_000, 10_000] if quick else [1_000, 10_000, 100_000])
    rounds = rounds or 3
    rate = 1500.0  # creates per second, refined by each run
    rows: dict[int, dict[str, Any]] = {}
    with ServerProcess("benchmarks.fast_server", "--polls", "2", "--key", API_KEY) as server:
        _measure(server, 500, 1.0)  # warm-up (page cache, server code)
        for n in sizes:
            runs = []
            # Big sizes take minutes per run: one round there (and at 10k with --quick).
            for _ in range(rounds if n < (10_000 if quick else 100_000) else 1):
                # Just long enough for the submit phase: the wait is idle time.
                delay = max(1.0, 1.2 * n / rate)
                sample = _measure(server, n, delay)
                rate = sample["submit_rate"]
                runs.append(sample)
            rows[n] = {
                "rounds": len(runs),
                "cpu_us_per_task": median([r["cpu"] / n * 1e6 for r in runs]),
                "wall_s": median([r["wall"] for r in runs]),
                "tracked_at_once": min(r["tracked"] for r in runs),
                "rss_bytes_per_task": median([r["rss_per_task"] for r in runs]),
                "peak_sockets": max(r["peak_sockets"] for r in runs),
                "peak_fds": max(r["peak_fds"] for r in runs),
                "server_max_open_connections": max(r["server_max_open_connections"] for r in runs),
                "submit_rate": median([r["submit_rate"] for r in runs]),
            }
        traced_n = 10_000
        traced = _measure(server, traced_n, max(1.0, 2.0 * traced_n / rate), trace=True)
    cpus = [row["cpu_us_per_task"] for row in rows.values()]
    spread = max(cpus) / min(cpus)
    largest = rows[max(rows)]
    sockets = max(row["peak_sockets"] for row in rows.values())
    goals = [
        {
            "goal": f"CPU per task flat within 20% from {min(rows):,} to {max(rows):,}",
            "value": round(spread, 3),
            "target": "max/min <= 1.20",
            "result": verdict(spread <= 1.20),
        },
        {
            "goal": f"memory per tracked task at {max(rows):,} (RSS delta / tracked)",
            "value": f"{largest['rss_bytes_per_task']:.0f} B",
            "target": "<= 2048 B",
            "result": verdict(largest["rss_bytes_per_task"] <= 2048),
        },
        {
            "goal": "peak open sockets <= connector limit",
            "value": sockets,
            "target": f"<= {CONNECTIONS}",
            "result": verdict(sockets <= CONNECTIONS),
        },
    ]
    return {
        "server": "benchmarks.fast_server --polls 2 (raw asyncio, subprocess); client in a fresh child per run",
        "connector_limit": CONNECTIONS,
        "sizes": rows,
        "tracemalloc_10k": {
            "traced_bytes_per_task": traced["traced_per_task"],
            "top_allocations": traced["top_allocations"],
        },
        "cpu_spread": spread,
        "goals": goals,
    }


def report(result: dict[str, Any]) -> list[str]:
    """Lines to print for this section."""
    lines = [
        f"3. Scale: create + 2 polls per task, max_concurrency=None, "
        f"{result['connector_limit']} connections; server: {result['server']}",
        f"   {'tasks':>8}{'rounds':>7}{'CPU us/task':>13}{'wall s':>9}{'tracked':>9}"
        f"{'RSS B/task':>12}{'sockets':>9}",
    ]
    for n, row in result["sizes"].items():
        lines.append(
            f"   {int(n):>8,}{row['rounds']:>7}{row['cpu_us_per_task']:>13.0f}{row['wall_s']:>9.1f}"
            f"{row['tracked_at_once']:>9,}{row['rss_bytes_per_task']:>12.0f}{row['peak_sockets']:>9}"
        )
    traced = result["tracemalloc_10k"]
    lines.append(
        f"   tracemalloc at 10,000 tracked: {traced['traced_bytes_per_task']:.0f} B/task; top: "
        + "; ".join(traced["top_allocations"][:3])
    )
    lines += [
        f"   [{g['result']}] {g['goal']}: {g['value']} ({g['target']})" for g in result["goals"]
    ]
    return lines


if __name__ == "__main__":
    child_main(sys.argv[1:])
