"""Section 1: per-task overhead of the client against hand-written aiohttp and httpx loops.

Server: `benchmarks.fast_server` in a child process (tasks succeed at their first poll), so the
server is never the bottleneck. Every contender sends, per task, one multipart create and one
JSON result poll with the same Authorization header, 64 tasks in flight, 64 connections.
Wall and CPU time (`time.process_time`, this process only) are medians of several rounds.

The client skips the environment's proxy and netrc look-ups for 127.0.0.1 and localhost only, so
a second run of our client goes to 127.0.0.2 (the same server, on every Linux loopback): that is
the path a request to the real API takes. Goals are judged on both.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

import nanobanana_async as nb

from ._common import API_KEY, ServerProcess, clock, median, verdict

CREATE_PATH = "/api/v1/image/nano-banana"
RESULT_PATH = "/api/v1/image/nano-banana/result"
PROMPT = "a banana cat"
FIELDS = (
    ("prompt", PROMPT),
    ("model", "nano-banana"),
    ("mode", "text-to-image"),
    ("aspectRatio", "auto"),
    ("imageSize", "1K"),
)
IN_FLIGHT = 64
#: A loopback address the client does not recognise as local (see the module docstring).
REMOTE_ALIAS = "127.0.0.2"

Runner = Callable[[str, int], Awaitable[None]]


async def run_client(base_url: str, n: int, create_keepalive: float | None = None) -> None:
    """Our client on default settings: `Client.map` with 64 in flight and an immediate first poll.

    By default creates reuse connections idle for under `Timeouts.create_keepalive` (1 s);
    *create_keepalive* = 0 is the strict mode (a fresh connection for every create).
    """
    timeouts = (
        nb.Timeouts()
        if create_keepalive is None
        else nb.Timeouts(create_keepalive=create_keepalive)
    )
    async with nb.Client(
        API_KEY,
        base_url=base_url,
        max_concurrency=IN_FLIGHT,
        max_connections=IN_FLIGHT,
        poll=nb.PollPolicy(initial_delay=0),
        timeouts=timeouts,
    ) as client:
        results = await client.map(PROMPT for _ in range(n))
    assert len(results) == n


async def run_client_strict(base_url: str, n: int) -> None:
    """Our client in the strict mode: every create on a fresh connection."""
    await run_client(base_url, n, create_keepalive=0.0)


async def run_aiohttp_fresh(base_url: str, n: int) -> None:
    """The hand-written aiohttp loop, each create on a fresh connection (as our default)."""
    await run_aiohttp(base_url, n, fresh_creates=True)


async def run_aiohttp(base_url: str, n: int, fresh_creates: bool = False) -> None:
    """A hand-written aiohttp loop: 64 workers, each create then poll until terminal."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    json_headers = {**auth, "Content-Type": "application/json"}
    create_url = base_url + CREATE_PATH
    result_url = base_url + RESULT_PATH
    todo = iter(range(n))
    finished = 0
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    fresh = aiohttp.TCPConnector(limit=IN_FLIGHT, force_close=True) if fresh_creates else None
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        aiohttp.ClientSession(connector=fresh or aiohttp.TCPConnector(limit=1)) as fresh_session,
    ):
        creates = fresh_session if fresh_creates else session

        async def worker() -> None:
            nonlocal finished
            for _ in todo:
                form = aiohttp.FormData(quote_fields=False, default_to_multipart=True)
                for name, value in FIELDS:
                    form.add_field(name, value)
                async with creates.post(create_url, data=form, headers=auth) as answer:
                    body = await answer.read()
                task_id = json.loads(body)["data"]["id"]
                poll = json.dumps({"taskId": task_id}).encode()
                while True:
                    async with session.post(result_url, data=poll, headers=json_headers) as answer:
                        body = await answer.read()
                    if json.loads(body)["data"]["status"] != "running":
                        break
                finished += 1

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    assert finished == n


async def run_httpx(base_url: str, n: int) -> None:
    """The same loop written with `httpx.AsyncClient`."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    json_headers = {**auth, "Content-Type": "application/json"}
    create_url = base_url + CREATE_PATH
    result_url = base_url + RESULT_PATH
    todo = iter(range(n))
    finished = 0
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def worker() -> None:
            nonlocal finished
            for _ in todo:
                # (None, value) parts: multipart text fields without a filename, as aiohttp sends.
                files = [(name, (None, value)) for name, value in FIELDS]
                answer = await client.post(create_url, files=files, headers=auth)
                task_id = answer.json()["data"]["id"]
                poll = json.dumps({"taskId": task_id}).encode()
                while True:
                    answer = await client.post(result_url, content=poll, headers=json_headers)
                    if answer.json()["data"]["status"] != "running":
                        break
                finished += 1

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    assert finished == n


#: name -> (runner, host it connects to)
CONTENDERS: dict[str, tuple[Runner, str]] = {
    "nanobanana_async": (run_client, "127.0.0.1"),
    "ours, remote path": (run_client, REMOTE_ALIAS),
    "ours, strict fresh": (run_client_strict, "127.0.0.1"),
    "aiohttp loop": (run_aiohttp, "127.0.0.1"),
    "aiohttp, fresh": (run_aiohttp_fresh, "127.0.0.1"),
    "httpx loop": (run_httpx, "127.0.0.1"),
}
#: Which hand-written loop each of our runs is judged against: the one that treats its creates
#: alike (reused connections, our default; or a fresh connection each, the strict mode).
BASELINES = {
    "nanobanana_async": "aiohttp loop",
    "ours, remote path": "aiohttp loop",
    "ours, strict fresh": "aiohttp, fresh",
}


def _measure(server: ServerProcess, contender: tuple[Runner, str], n: int) -> dict[str, Any]:
    runner, host = contender
    server.post("/_reset")
    gc.collect()
    wall0, cpu0 = clock()
    asyncio.run(runner(f"http://{host}:{server.ports[0]}", n))
    wall1, cpu1 = clock()
    stats = server.get("/_stats")
    if stats["creates"] != n or stats["polls"] != n or stats["bad"] or stats["unauthorized"]:
        raise RuntimeError(f"unexpected traffic for {n} tasks: {stats}")
    return {
        "wall": wall1 - wall0,
        "cpu": cpu1 - cpu0,
        "create_types": stats["create_types"],
        "connections": stats["connections"],
    }


def run(*, quick: bool, n: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    """Run the section and return its results."""
    n = n or (1000 if quick else 2000)
    rounds = rounds or (3 if quick else 5)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    with ServerProcess(
        "benchmarks.fast_server", "--polls", "1", "--key", API_KEY, "--alias", REMOTE_ALIAS
    ) as server:
        for contender in CONTENDERS.values():  # warm-up: imports, lazy init, code caches
            _measure(server, contender, 200)
        for _ in range(rounds):
            for name, contender in CONTENDERS.items():  # interleaved, so drift hits all alike
                raw[name].append(_measure(server, contender, n))
    summary: dict[str, Any] = {}
    for name, samples in raw.items():
        wall = median([s["wall"] for s in samples])
        cpu = median([s["cpu"] for s in samples])
        summary[name] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "wall_us_per_task": wall / n * 1e6,
            "cpu_us_per_task": cpu / n * 1e6,
            "tasks_per_s": n / wall,
            "create_body": samples[-1]["create_types"],
            "rounds_wall_s": [s["wall"] for s in samples],
            "rounds_cpu_s": [s["cpu"] for s in samples],
        }
    slow = summary["httpx loop"]
    ratios: dict[str, dict[str, float]] = {}
    goals = []
    for name, label in (
        ("nanobanana_async", ""),
        ("ours, remote path", " (remote path)"),
        ("ours, strict fresh", " (strict mode: fresh create connections)"),
    ):
        ours = summary[name]
        base = summary[BASELINES[name]]
        r = ratios[name] = {
            "wall_vs_aiohttp": ours["wall_s"] / base["wall_s"],
            "cpu_vs_aiohttp": ours["cpu_s"] / base["cpu_s"],
            "httpx_wall_vs_ours": slow["wall_s"] / ours["wall_s"],
            "httpx_cpu_vs_ours": slow["cpu_s"] / ours["cpu_s"],
        }
        goals += [
            _goal(f"wall at most the aiohttp loop's{label}", r["wall_vs_aiohttp"], "<= 1.00", 1.00),
            _goal(f"CPU at most the aiohttp loop's{label}", r["cpu_vs_aiohttp"], "<= 1.00", 1.00),
            _goal(
                f"10x faster (wall) than the httpx loop{label}",
                r["httpx_wall_vs_ours"],
                ">= 10",
                10,
                True,
            ),
            _goal(
                f"10x less CPU than the httpx loop{label}",
                r["httpx_cpu_vs_ours"],
                ">= 10",
                10,
                True,
            ),
        ]
    return {
        "server": "benchmarks.fast_server (raw asyncio, subprocess); tasks succeed at poll 1",
        "tasks": n,
        "in_flight": IN_FLIGHT,
        "rounds": rounds,
        "contenders": summary,
        "ratios": ratios,
        "goals": goals,
    }


def _goal(
    name: str, value: float, target: str, bound: float, at_least: bool = False
) -> dict[str, Any]:
    ok = value >= bound if at_least else value <= bound
    return {"goal": name, "value": round(value, 3), "target": target, "result": verdict(ok)}


def report(result: dict[str, Any]) -> list[str]:
    """Lines to print for this section."""
    n = result["tasks"]
    lines = [
        f"1. Overhead: {n} tasks, {result['in_flight']} in flight, first poll succeeds; "
        f"median of {result['rounds']} rounds; server: {result['server']}",
        f"   {'contender':<18}{'wall s':>9}{'CPU s':>9}{'CPU us/task':>13}{'tasks/s':>10}  create body",
    ]
    for name, row in result["contenders"].items():
        bodies = ", ".join(sorted(row["create_body"]))
        lines.append(
            f"   {name:<18}{row['wall_s']:>9.3f}{row['cpu_s']:>9.3f}"
            f"{row['cpu_us_per_task']:>13.0f}{row['tasks_per_s']:>10.0f}  {bodies}"
        )
    for name, r in result["ratios"].items():
        lines.append(
            f"   {name}: vs {BASELINES[name]} wall {r['wall_vs_aiohttp']:.2f}x, CPU "
            f"{r['cpu_vs_aiohttp']:.2f}x;  httpx loop vs it: wall {r['httpx_wall_vs_ours']:.1f}x, "
            f"CPU {r['httpx_cpu_vs_ours']:.1f}x"
        )
    lines += [
        f"   [{g['result']}] {g['goal']}: {g['value']} ({g['target']})" for g in result["goals"]
    ]
    return lines
