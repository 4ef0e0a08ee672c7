"""Shared helpers for the engine tests: clients wired to an emulator, bounded waits, checks."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
from _emulator_hold import Gate, Hold
from _emulator_hold import held_emulator as held_emulator

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, RequestRecord

#: Speed of the emulators in most tests: a 15 s generation takes 15 ms.
SPEED = 1000.0
#: Retries without backoff sleeps (a Retry-After pause is still honoured).
NO_SLEEP = nb.RetryPolicy(sleep=False)


def client_for(emu: Emulator, *, speed: float = SPEED, **options: Any) -> nb.Client:
    """Return a client of *emu* polling at its *speed*, without backoff sleeps by default."""
    options.setdefault("poll", nb.PollPolicy(speed=speed))
    options.setdefault("retry", NO_SLEEP)
    return nb.Client(emu.api_key, base_url=emu.base_url, **options)


def slots(client: nb.Client) -> int:
    """Return how many generation slots the client's in-process limiter holds."""
    limiter = client.limiter
    assert isinstance(limiter, nb.Limiter)
    return limiter.in_flight


def port_of(emu: Emulator) -> int:
    """Return the TCP port *emu* listens on."""
    return int(emu.base_url.rsplit(":", 1)[1])


def established_to(port: int) -> int:
    """Count established TCP connections whose remote end is 127.0.0.1:*port* (client sides)."""
    with open("/proc/net/tcp") as table:
        next(table)
        rows = [line.split() for line in table]
    # Distinct local ends: the kernel writes the table in pages, so a read racing other sockets
    # (a busy machine) can list one connection twice.
    return len(
        {row[1] for row in rows if int(row[2].rsplit(":", 1)[1], 16) == port and row[3] == "01"}
    )


def sockets_to(port: int) -> int:
    """Count this process's open sockets whose peer is 127.0.0.1:*port* (client sides).

    Called on the event loop's thread, it sees one instant: no socket of this process opens or
    closes while it runs. (A read of /proc/net/tcp does not: the kernel writes the table a page at
    a time, so a connection closed and another opened during the read can both be listed.)
    """
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                peer = sock.getpeername()
        except OSError:  # closed meanwhile (by another thread), or not connected
            continue
        count += isinstance(peer, tuple) and tuple(peer[:2]) == ("127.0.0.1", port)
    return count


def records(emu: Emulator, endpoint: str) -> list[RequestRecord]:
    """Return the requests *emu* received on *endpoint* (``create``, ``result``, ...)."""
    return [record for record in emu.requests if record.endpoint == endpoint]


async def wait_for(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Wait (checking every millisecond) until ``condition()`` holds; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        await anyio.sleep(0.001)


def assert_no_resource_warning() -> None:
    """Collect garbage and fail if anything was left unclosed (a socket, a session, a loop)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


@asynccontextmanager
async def no_task_left_behind() -> AsyncIterator[None]:
    """Fail if asyncio tasks started inside the block are still alive shortly after it."""
    before = asyncio.all_tasks()
    yield

    def leftovers() -> set[asyncio.Task[Any]]:
        return {task for task in asyncio.all_tasks() - before if not task.done()}

    # The emulator's side of a closed connection notices the EOF a loop turn or two later.
    try:
        await wait_for(lambda: not leftovers(), timeout=2.0)
    except AssertionError:
        raise AssertionError(f"tasks left behind: {leftovers()!r}") from None


@asynccontextmanager
async def gated_emulator(**options: Any) -> AsyncIterator[tuple[Emulator, Gate, Hold]]:
    """Start an emulator whose creates wait at a `Gate` and whose tasks are held running."""
    options.setdefault("speed", SPEED)
    async with Emulator(**options) as emu:
        with emu.gate("create") as gate, emu.hold() as hold:
            yield emu, gate, hold


class PauseLog(nb.Limiter):
    """The in-process limiter, noting when (``time.monotonic()``) and for how long it paused.

    The note is taken before the pause takes effect, so ``start + seconds`` is never later than
    the moment the limiter lets requests go again.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.pauses: list[tuple[float, float]] = []
        self.paused = asyncio.Event()

    async def pause(self, seconds: float) -> None:
        """Note the pause, then apply it."""
        self.pauses.append((time.monotonic(), seconds))
        self.paused.set()
        await super().pause(seconds)


@asynccontextmanager
async def traced_session() -> AsyncIterator[tuple[aiohttp.ClientSession, list[tuple[float, str]]]]:
    """Yield an aiohttp session noting ``(time.monotonic(), path)`` as each request starts.

    Given to a client as ``session=``, it stamps the moment a request leaves the client's gate
    (nothing between the gate and aiohttp's request start awaits), on the clock the limiter uses.
    """
    starts: list[tuple[float, str]] = []

    async def on_start(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        starts.append((time.monotonic(), params.url.path))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session, starts
