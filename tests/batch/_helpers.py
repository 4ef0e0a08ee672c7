"""Helpers for the batch tests: a fast client for an emulator, and journal readers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULT_PATH = "/api/v1/image/nano-banana/result"


def fast_client(emu: Emulator, **options: Any) -> nb.Client:
    """Return a client for *emu* that polls at the emulator's speed and never sleeps in retries."""
    return nb.Client(
        emu.api_key,
        base_url=emu.base_url,
        poll=nb.PollPolicy(speed=1000),
        retry=nb.RetryPolicy(sleep=False),
        **options,
    )


def journal_lines(path: Path) -> list[dict[str, Any]]:
    """Return every record of the journal at *path*, in order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def last_states(path: Path) -> dict[int, str]:
    """Return the last journaled state of each position."""
    return {record["position"]: record["state"] for record in journal_lines(path)}


def pngs(folder: Path) -> list[Path]:
    """Return the PNG files in *folder*, sorted, checking each starts with the PNG signature."""
    found = sorted(folder.glob("*.png"))
    for path in found:
        assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    return found


async def wait_until(condition: Callable[[], bool], *, max_checks: int = 3000) -> None:
    """Wait (in 1 ms steps, boundedly) until ``condition()`` holds."""
    for _ in range(max_checks):
        if condition():
            return
        await anyio.sleep(0.001)
    raise AssertionError("condition never held")


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


@asynccontextmanager
async def held_emulator(**options: Any) -> AsyncIterator[tuple[Emulator, Hold]]:
    """Start an emulator (speed 1000, images downscaled by 8) whose tasks are held running."""
    options.setdefault("speed", 1000)
    options.setdefault("image_downscale", 8)
    emu = Emulator(**options)
    hold = Hold(emu)
    async with emu:
        try:
            yield emu, hold
        finally:
            hold.release()
