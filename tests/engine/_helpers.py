"""Shared helpers for the engine tests: clients wired to an emulator, bounded waits, checks."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import aiohttp
import anyio
from aiohttp import web

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, RequestRecord

#: Speed of the emulators in most tests: a 15 s generation takes 15 ms.
SPEED = 1000.0
#: Retries without backoff sleeps (a Retry-After pause is still honoured).
NO_SLEEP = nb.RetryPolicy(sleep=False)


CREATE_PATH = "/api/v1/image/nano-banana"
RESULT_PATH = "/api/v1/image/nano-banana/result"


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


class Hold:
    """Make an emulator's polls report tasks as still running after their end, until released.

    A middleware on the emulator's own application (added before it starts) turns a poll's
    terminal answer into a running one (progress capped at 99), so the test, not the machine's
    load, decides when a client may see a task end. Creates, the ledger and files are untouched.
    """

    def __init__(self, emu: Emulator) -> None:
        self._holding = True
        self._released: list[Callable[[str], bool]] = []
        #: Ids of the tasks whose end was hidden from a poll at least once.
        self.hidden: set[str] = set()
        emu.app.middlewares.append(web.middleware(self._rewrite))

    def release(self, which: str | Callable[[str], bool] | None = None) -> None:
        """Let a task (an id, or the ids a predicate accepts; none: all) report its real status."""
        if which is None:
            self._holding = False
        elif isinstance(which, str):
            self._released.append(which.__eq__)
        else:
            self._released.append(which)

    def holds(self, task_id: str) -> bool:
        """Whether polls of *task_id* are still held."""
        return self._holding and not any(released(task_id) for released in self._released)

    @property
    def _rewrite(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        # aiohttp marks a middleware by setting an attribute: it needs a function, not a method.
        async def rewrite(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            return self._answer(await handler(request), request)

        return rewrite

    def _answer(self, response: web.StreamResponse, request: web.Request) -> web.StreamResponse:
        if (
            not self._holding
            or request.path != RESULT_PATH
            or response.status != 200
            or not isinstance(response, web.Response)
            or not isinstance(response.body, bytes)
        ):
            return response
        payload = json.loads(response.body)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or data.get("status") == "running":
            return response
        task_id = data.get("id")
        if not isinstance(task_id, str) or not self.holds(task_id):
            return response
        self.hidden.add(task_id)
        progress = data.get("progress")
        data.update(
            status="running",
            progress=min(progress if isinstance(progress, int) else 0, 99),
            results=[],
            failure_reason=None,
            error=None,
        )
        return web.json_response(payload)


class Gate:
    """Keep every request to one path waiting at the emulator's door until opened (a middleware).

    A held request has left the client but has not reached the emulator's handler: a create is
    on the wire, neither processed nor charged, for exactly as long as the test wants.
    """

    def __init__(self, emu: Emulator, path: str = CREATE_PATH) -> None:
        self._path = path
        self._open = asyncio.Event()
        #: Requests waiting at the gate now.
        self.waiting = 0
        emu.app.middlewares.append(web.middleware(self._door))

    @property
    def _door(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        async def door(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            if request.path == self._path and not self._open.is_set():
                self.waiting += 1
                try:
                    await self._open.wait()
                finally:
                    self.waiting -= 1
            return await handler(request)

        return door

    def open(self) -> None:
        """Let the waiting requests, and every later one, through."""
        self._open.set()


@asynccontextmanager
async def held_emulator(**options: Any) -> AsyncIterator[tuple[Emulator, Hold]]:
    """Start an emulator (speed 1000 unless given) whose tasks are held running until released."""
    options.setdefault("speed", SPEED)
    emu = Emulator(**options)
    hold = Hold(emu)
    async with emu:
        try:
            yield emu, hold
        finally:
            hold.release()


@asynccontextmanager
async def gated_emulator(**options: Any) -> AsyncIterator[tuple[Emulator, Gate, Hold]]:
    """Start an emulator whose creates wait at a `Gate` and whose tasks are held running."""
    options.setdefault("speed", SPEED)
    emu = Emulator(**options)
    gate = Gate(emu)
    hold = Hold(emu)
    async with emu:
        try:
            yield emu, gate, hold
        finally:
            gate.open()
            hold.release()


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
