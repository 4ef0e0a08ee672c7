"""Soak: thousands of tasks through a faulty emulator; every task accounted for, nothing leaking.

The emulator runs in a child process (so the figures are the client's alone) with 3 % of tasks
failing, 2 % of polls answered 500 and 1 % of all requests answered 429. The client runs every
task through `Client.as_completed` with a bounded number in flight, then the run checks:

- every task is accounted for (succeeded + failed + errors = tasks), none created twice;
- the client's credits reconcile with the server's ledger (charged, refunded);
- open file descriptors and RSS, sampled as tasks complete, level off; the descriptors are back
  to their first sample once the client closed.

Run: ``python -m benchmarks.soak`` (20,000 tasks, 200 in flight). ``--tasks``, ``--in-flight``,
``--speed`` change the size. ``python -m benchmarks.soak --keepalive`` instead measures false
`SubmitUncertainError`s against a server closing idle keep-alive connections (``--idle S``,
a create every ``--gap`` s), with creates on the shared pool (what a caller's own session
gets), on the client's own create pool (the default: connections idle under 1 s reused), and
on a fresh connection each (the strict mode).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

#: The fault mix of the soak (issue 10): failed tasks, poll 500s, 429s on any request.
FAILURE_RATE = 0.03
POLL_500_RATE = 0.02
RATE_LIMIT_RATE = 0.01
#: Retry-After of the 429s, in seconds: every one pauses the whole key that long.
RATE_LIMIT_PAUSE = 0.05


# --- the server side -------------------------------------------------------------------------------


async def serve(speed: float, seed: int) -> None:
    """Run a faulty emulator and a control port; print both ports; stop on stdin's end."""
    async with Emulator(
        speed=speed, credits=None, failure_rate=FAILURE_RATE, seed=seed, image_downscale=8
    ) as emu:
        # Earlier injections take precedence, and a request gets one fault at most.
        emu.faults.inject(Fault.rate_limit(retry_after=RATE_LIMIT_PAUSE), rate=RATE_LIMIT_RATE)
        emu.faults.inject(Fault.status(500), endpoint="result", rate=POLL_500_RATE)

        async def ledger(_: web.Request) -> web.Response:
            book = emu.ledger
            return web.json_response(
                {
                    "creates_received": book.creates_received,
                    "tasks_created": book.tasks_created,
                    "credits_charged": book.credits_charged,
                    "credits_refunded": book.credits_refunded,
                    "polls_received": book.polls_received,
                    "faults_fired": emu.faults.fired_total,
                }
            )

        app = web.Application()
        app.router.add_get("/ledger", ledger)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        control = runner.addresses[0][1]
        print(f"READY {emu.base_url} {emu.api_key} {control}", flush=True)
        # The parent closes our stdin to stop us.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()


@contextlib.contextmanager
def child_emulator(speed: float, seed: int) -> Iterator[tuple[str, str, str]]:
    """Start `serve` in a child process; yield its base URL, key and ledger URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--serve",
            "--speed",
            str(speed),
            "--seed",
            str(seed),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"the emulator did not start: {line!r}")
        _, base_url, key, control = line
        yield base_url, key, f"http://127.0.0.1:{control}/ledger"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the client side -------------------------------------------------------------------------------


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1e6


async def soak(
    base_url: str,
    api_key: str,
    *,
    tasks: int,
    in_flight: int,
    speed: float,
    samples: int = 10,
) -> dict[str, Any]:
    """Run *tasks* generations with *in_flight* at once; return the accounting and the samples."""
    counts = {"succeeded": 0, "failed": 0, "errors": 0}
    errors: dict[str, int] = {}
    # A count, not a set of ids: the soak itself must not grow with the tasks it runs.
    tasks_seen = 0
    submit_errors = 0
    trace: list[tuple[int, int, float]] = []
    fds_before = open_fds()
    every = max(1, tasks // samples)
    retry = nb.RetryPolicy(attempts=10, initial_backoff=0.01, max_backoff=0.2, deadline=60.0)
    started = time.perf_counter()
    client = nb.Client(
        api_key,
        base_url=base_url,
        max_concurrency=in_flight,
        poll=nb.PollPolicy(speed=speed),
        retry=retry,
        seed=0,
    )
    async with client:
        requests = (
            nb.GenerationRequest(prompt=f"soak {n}", model="nano-banana") for n in range(tasks)
        )
        done = 0
        async for outcome in client.as_completed(requests, return_exceptions=True):
            done += 1
            if isinstance(outcome, nb.NanoBananaError):
                counts["errors"] += 1
                submit_errors += 1
                errors[type(outcome).__name__] = errors.get(type(outcome).__name__, 0) + 1
            else:
                tasks_seen += 1
                try:
                    await outcome
                    counts["succeeded"] += 1
                except nb.TaskFailedError:
                    counts["failed"] += 1
                except nb.NanoBananaError as exc:
                    counts["errors"] += 1
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if done % every == 0:
                trace.append((done, open_fds(), rss_mb()))
        usage = client.credits
        in_flight_left = client.in_flight
    elapsed = time.perf_counter() - started
    return {
        **counts,
        "tasks": tasks,
        "accounted": sum(counts.values()),
        "error_types": errors,
        "tasks_seen": tasks_seen,
        "submit_errors": submit_errors,
        "in_flight_left": in_flight_left,
        "charged": usage.charged,
        "refunded": usage.refunded,
        "reserved": usage.reserved,
        "fds_before": fds_before,
        "fds_after": open_fds(),
        "trace": trace,
        "elapsed": elapsed,
    }


async def fetch_ledger(url: str) -> dict[str, Any]:
    """Read the child emulator's ledger."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        ledger: dict[str, Any] = await response.json()
        return ledger


def report(figures: dict[str, Any], ledger: dict[str, Any]) -> bool:
    """Print the figures and checks of a soak; return whether every check held."""
    trace = figures["trace"]
    print(
        f"tasks {figures['tasks']} in {figures['elapsed']:.1f} s "
        f"({figures['tasks'] / figures['elapsed']:.0f} tasks/s)"
    )
    print(
        f"  succeeded {figures['succeeded']}  failed {figures['failed']}  errors {figures['errors']} "
        f"{figures['error_types']}"
    )
    print(
        f"  client: charged {figures['charged']}  refunded {figures['refunded']}  reserved {figures['reserved']}"
    )
    print(
        f"  server: creates {ledger['creates_received']}  tasks {ledger['tasks_created']}  "
        f"charged {ledger['credits_charged']}  refunded {ledger['credits_refunded']}  "
        f"polls {ledger['polls_received']}  faults fired {ledger['faults_fired']}"
    )
    print("  done    fds   RSS MB")
    for done, fds, rss in trace:
        print(f"  {done:6d}  {fds:4d}  {rss:7.1f}")
    print(f"  fds before {figures['fds_before']}, after close {figures['fds_after']}")
    checks = {
        "every task accounted for": figures["accounted"] == figures["tasks"],
        "no create charged twice": ledger["tasks_created"]
        == figures["tasks_seen"]
        == figures["tasks"] - figures["submit_errors"],
        "credits charged reconcile": figures["charged"] == ledger["credits_charged"],
        "credits refunded reconcile": figures["refunded"] == ledger["credits_refunded"],
        "nothing left in flight or reserved": figures["in_flight_left"] == 0
        and figures["reserved"] == 0,
        "file descriptors back after close": figures["fds_after"] <= figures["fds_before"],
    }
    for name, held in checks.items():
        print(f"  [{'ok' if held else 'FAILED'}] {name}")
    return all(checks.values())


# --- keep-alive race ---------------------------------------------------------------------------


async def keepalive_race(
    rounds: int,
    idle: float,
    fresh: bool,
    seed: int = 0,
    gap: float | None = None,
    create_keepalive: float | None = None,
) -> dict[str, int]:
    """Creates racing a server that closes connections idle for *idle* s; count false uncertainty.

    Each round submits one create after a pause around *gap* (default: *idle*), so the pooled
    connection it might ride is being closed by the server just then. With the client's own
    sessions creates reuse only connections idle under `Timeouts.create_keepalive` (1 s, or
    *create_keepalive*; 0 is the strict mode); a *gap* around that window is the worst case for
    it. A false uncertain create is a `SubmitUncertainError` for a create the server never
    processed.
    """
    charged = 0

    async def create(request: web.Request) -> web.Response:
        nonlocal charged
        await request.read()
        charged += 1
        return web.json_response(
            {"data": {"id": f"3-ka-{charged}", "status": "running", "progress": 0}}
        )

    async def result(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {"data": {"id": body["taskId"], "status": "failed", "progress": 0}}
        )

    app = web.Application()
    app.router.add_post("/api/v1/image/nano-banana", create)
    app.router.add_post("/api/v1/image/nano-banana/result", result)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    rng = random.Random(seed)
    uncertain = 0
    session = None if fresh else aiohttp.ClientSession()
    try:
        retry = nb.RetryPolicy(attempts=5, sleep=False)
        timeouts = (
            nb.Timeouts()
            if create_keepalive is None
            else nb.Timeouts(create_keepalive=create_keepalive)
        )
        async with nb.Client(
            "k",
            base_url=base_url,
            session=session,
            retry=retry,
            max_concurrency=None,
            timeouts=timeouts,
        ) as client:
            for _ in range(rounds):
                await client.get("3-warm")  # leaves a pooled connection behind
                await asyncio.sleep((idle if gap is None else gap) * rng.uniform(0.9, 1.1))
                try:
                    await client.submit("a banana cat")
                except nb.SubmitUncertainError:
                    uncertain += 1
    finally:
        if session is not None:
            await session.close()
        await runner.cleanup()
    # Every create the server processed answered; the uncertain ones never reached it.
    return {"rounds": rounds, "uncertain": uncertain, "charged": charged}


# --- entry -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the soak (or the keep-alive measurement) and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--speed", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keepalive", action="store_true", help="measure the keep-alive race")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--idle", type=float, default=0.02)
    parser.add_argument("--gap", type=float, default=None, help="pause between creates (--idle)")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.speed, args.seed))
        return 0
    if args.keepalive:
        modes = (
            (False, None, "a caller's session= (creates on its long-lived pool)"),
            (True, None, "our sessions, the default (creates reuse connections idle < 1 s)"),
            (True, 0.0, "our sessions, strict (create_keepalive=0: a fresh connection each)"),
        )
        for fresh, keepalive, label in modes:
            figures = asyncio.run(
                keepalive_race(args.rounds, args.idle, fresh, args.seed, args.gap, keepalive)
            )
            rate = figures["uncertain"] / figures["rounds"]
            print(
                f"{label}: {figures['uncertain']}/{figures['rounds']} creates falsely uncertain "
                f"({rate:.1%}); server charged {figures['charged']}"
            )
        return 0
    with child_emulator(args.speed, args.seed) as (base_url, key, ledger_url):
        figures = asyncio.run(
            soak(base_url, key, tasks=args.tasks, in_flight=args.in_flight, speed=args.speed)
        )
        ledger = asyncio.run(fetch_ledger(ledger_url))
    print(json.dumps({k: v for k, v in figures.items() if k != "trace"}))
    return 0 if report(figures, ledger) else 1


if __name__ == "__main__":
    sys.exit(main())
