"""The RedisLimiter's cost against the in-process Limiter, at the same concurrency.

Run from the repository root: ``python -m benchmarks.redis_limiter [--tasks N] [--rounds R]``.
Needs ``redis-server`` on the PATH and the ``redis`` extra; not part of ``python -m benchmarks``.

Server: `benchmarks.fast_server` in a child process (each task answers ``running`` at its first
poll and ``succeeded`` at its second, so every task takes a slot, renews it once and releases
it), and a ``redis-server`` on a free loopback port without persistence; both on CPU 1, the
client on CPU 0 (two cores or more). One client, 64 tasks in flight (`Client.map`) through:

- ``Limiter``: the in-process limiter (the default);
- ``RedisLimiter``: slots, pause and rate bucket in Redis;
- ``RedisLimiter, budget``: the same with ``max_credits`` (a reservation and a settle per create).

Reported per task (medians over rounds): wall and CPU time of the client process, and requests
to Redis (commands clients sent, from ``INFO commandstats``: EVALSHA, SUBSCRIBE and the like,
not the commands our scripts run inside Redis).

Saved to ``benchmarks/results/<date>-redis-limiter.json`` (the figures) and
``<date>-redis-limiter.txt`` (the table and the README row); ``--no-save`` only prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nanobanana_async as nb

from ._common import API_KEY, ServerProcess, clock, median, pin_client

IN_FLIGHT = 64
LEASE_SECONDS = 30.0
RESULTS = Path(__file__).resolve().parent / "results"
#: The goals of issue 17: extra CPU per create over `Limiter`, Redis requests per task (no budget).
GOAL_EXTRA_CPU_US = 300.0
GOAL_REQUESTS = 2.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _on_server_cpu() -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})


def _redis_info(port: int, section: str = "commandstats") -> dict[str, str]:
    """An ``INFO`` section of the server, as a dict (one command)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            header, _, rest = data.partition(b"\r\n")
            if header.startswith(b"$") and len(rest) >= int(header[1:]) + 2:
                break
    text = data.partition(b"\r\n")[2].decode()
    return dict(
        line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#")
    )


#: Commands a client sends itself; the others in ``commandstats`` run inside our scripts.
TOP_LEVEL = ("evalsha", "eval", "script", "subscribe", "unsubscribe", "ping", "client", "hello")


def _requests(port: int) -> int:
    """Requests clients sent to the server so far (INFO calls aside)."""
    stats = _redis_info(port)
    total = 0
    for name in TOP_LEVEL:
        found = stats.get(f"cmdstat_{name}")
        if found is not None:
            total += int(dict(part.split("=") for part in found.split(","))["calls"])
        for key, value in stats.items():
            if key.startswith(f"cmdstat_{name}|"):
                total += int(dict(part.split("=") for part in value.split(","))["calls"])
    return total


async def _round(base_url: str, tasks: int, make: Callable[[], nb.limiters.BaseLimiter]) -> None:
    limiter = make()
    try:
        async with nb.Client(
            API_KEY,
            base_url=base_url,
            limiter=limiter,
            max_connections=IN_FLIGHT,
            poll=nb.PollPolicy(initial_delay=0, min_interval=0.01, max_interval=0.01),
        ) as client:
            results = await client.map("a banana cat" for _ in range(tasks))
        assert len(results) == tasks
    finally:
        if isinstance(limiter, nb.RedisLimiter):
            await limiter.aclose()


def main() -> None:
    """Measure, print a table and a README-ready row, and save them under benchmarks/results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server not found: install the redis-server system package")
    pinning = pin_client()
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory(prefix="nb-bench-redis-") as directory:
        redis_server = subprocess.Popen(
            [
                executable,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.DEVNULL,
            preexec_fn=_on_server_cpu,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    _requests(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            version = _redis_info(port, "server").get("redis_version", "?")
            with ServerProcess("benchmarks.fast_server", "--polls", "2", "--key", API_KEY) as srv:
                rows = _measure(srv.base_url, url, port, args.tasks, args.rounds)
        finally:
            redis_server.kill()
            redis_server.wait()
    today = datetime.date.today().isoformat()
    lines = [
        f"# python -m benchmarks.redis_limiter, {today}",
        f"pinning: {pinning}; redis-server {version}; {args.tasks} tasks, {IN_FLIGHT} in flight, "
        f"{args.rounds} rounds (medians)",
        "",
        f"{'limiter':<24} {'wall us/task':>13} {'CPU us/task':>12} {'Redis req/task':>15}",
    ]
    for name, wall, cpu, requests in rows:
        lines.append(f"{name:<24} {wall:>13.0f} {cpu:>12.0f} {requests:>15.2f}")
    base, redis_row, budget_row = rows
    extra = redis_row[2] - base[2]
    extra_budget = budget_row[2] - base[2]
    lines += [
        "",
        f"RedisLimiter: {extra:+.0f} us CPU per create over Limiter (goal: at most "
        f"+{GOAL_EXTRA_CPU_US:.0f}: {'met' if extra <= GOAL_EXTRA_CPU_US else 'MISSED'}), "
        f"{redis_row[3]:.2f} Redis requests per task (goal: at most {GOAL_REQUESTS:.0f}: "
        f"{'met' if redis_row[3] <= GOAL_REQUESTS else 'MISSED'})",
        f"RedisLimiter with max_credits: {extra_budget:+.0f} us CPU, {budget_row[3]:.2f} requests",
        "",
        f"| RedisLimiter overhead, {args.tasks:,} tasks, {IN_FLIGHT} in flight (CPU µs/task, "
        f"Redis requests/task) | Limiter {base[2]:.0f}; RedisLimiter {redis_row[2]:.0f} "
        f"({extra:+.0f}), {redis_row[3]:.2f} requests; RedisLimiter with max_credits "
        f"{budget_row[2]:.0f} ({extra_budget:+.0f}), {budget_row[3]:.2f} requests ({today}) "
        f"| +{GOAL_EXTRA_CPU_US:.0f} µs, {GOAL_REQUESTS:.0f} requests |",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.no_save:
        return
    document = {
        "date": today,
        "python": platform.python_version(),
        "redis_server": version,
        "pinning": pinning,
        "tasks": args.tasks,
        "in_flight": IN_FLIGHT,
        "rounds": args.rounds,
        "rows": [
            {"limiter": name, "wall_us": wall, "cpu_us": cpu, "redis_requests": requests}
            for name, wall, cpu, requests in rows
        ],
        "extra_cpu_us": extra,
        "extra_cpu_us_budget": extra_budget,
        "goals": {
            "extra_cpu_us": GOAL_EXTRA_CPU_US,
            "redis_requests": GOAL_REQUESTS,
            "met": extra <= GOAL_EXTRA_CPU_US and redis_row[3] <= GOAL_REQUESTS,
        },
    }
    stem = f"{today}-redis-limiter"
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    (RESULTS / f"{stem}.txt").write_text(text)
    print(f"\nSaved benchmarks/results/{stem}.json and {stem}.txt")


def _measure(
    base_url: str, url: str, port: int, tasks: int, rounds: int
) -> list[tuple[str, float, float, float]]:
    contenders: list[tuple[str, Callable[[], nb.limiters.BaseLimiter]]] = [
        ("Limiter", lambda: nb.Limiter(max_concurrency=IN_FLIGHT)),
        (
            "RedisLimiter",
            lambda: nb.RedisLimiter(
                url, name="bench", max_concurrency=IN_FLIGHT, lease_seconds=LEASE_SECONDS
            ),
        ),
        (
            "RedisLimiter, budget",
            lambda: nb.RedisLimiter(
                url,
                name="bench-budget",
                max_concurrency=IN_FLIGHT,
                lease_seconds=LEASE_SECONDS,
                max_credits=10**12,
            ),
        ),
    ]
    # Warm up (imports, script loading, the subscription).
    for _, make in contenders:
        asyncio.run(_round(base_url, IN_FLIGHT, make))
    rows = []
    for name, make in contenders:
        walls, cpus, requests = [], [], []
        for _ in range(rounds):
            gc.collect()
            before = _requests(port)
            wall0, cpu0 = clock()
            asyncio.run(_round(base_url, tasks, make))
            wall1, cpu1 = clock()
            requests.append((_requests(port) - before) / tasks)
            walls.append((wall1 - wall0) / tasks * 1e6)
            cpus.append((cpu1 - cpu0) / tasks * 1e6)
        rows.append((name, median(walls), median(cpus), median(requests)))
    return rows


if __name__ == "__main__":
    main()
