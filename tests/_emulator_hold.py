"""Emulator controls for load-proof tests: hold tasks running, keep creates at the door.

Importable from any test folder: pytest puts ``tests/`` on ``sys.path`` for the packages in it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from nanobanana_async.testing import Emulator

CREATE_PATH = "/api/v1/image/nano-banana"
RESULT_PATH = "/api/v1/image/nano-banana/result"


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
    options.setdefault("speed", 1000)
    emu = Emulator(**options)
    hold = Hold(emu)
    async with emu:
        try:
            yield emu, hold
        finally:
            hold.release()
