"""Helpers for the client tests: emulator and client factories, PNG bytes and PNG parsing."""

from __future__ import annotations

import json
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

#: Emulated seconds per real second, for the emulator and the client's poll timing alike.
SPEED = 1000.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULT_PATH = "/api/v1/image/nano-banana/result"


@asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[Emulator]:
    """Start an emulator with fast test defaults (speed 1000, images downscaled by 8)."""
    options.setdefault("speed", SPEED)
    options.setdefault("image_downscale", 8)
    async with Emulator(**options) as emu:
        yield emu


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
    """Start a fast test emulator whose tasks are held running (see `Hold`) until released."""
    options.setdefault("speed", SPEED)
    options.setdefault("image_downscale", 8)
    emu = Emulator(**options)
    hold = Hold(emu)
    async with emu:
        try:
            yield emu, hold
        finally:
            hold.release()


def make_client(
    emu: Emulator, api_key: str | None = None, *, speed: float = SPEED, **options: Any
) -> nb.Client:
    """Return a client of *emu* with polling scaled by *speed* and sleepless retries."""
    options.setdefault("poll", nb.PollPolicy(speed=speed))
    options.setdefault("retry", nb.RetryPolicy(sleep=False))
    options.setdefault("seed", 0)
    return nb.Client(api_key or emu.api_key, base_url=emu.base_url, **options)


def make_png(
    width: int = 2, height: int = 2, colour: tuple[int, int, int] = (200, 180, 40)
) -> bytes:
    """Build a tiny valid RGB PNG by hand."""
    raw = b"".join(b"\x00" + bytes(colour) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def png_dimensions(data: bytes) -> tuple[int, int]:
    """Return (width, height) from a PNG's IHDR, checking the signature and the IHDR's CRC."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    (length,) = struct.unpack(">I", data[8:12])
    assert data[12:16] == b"IHDR"
    assert length == 13
    ihdr = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert crc == zlib.crc32(b"IHDR" + ihdr)
    width, height = struct.unpack(">II", ihdr[:8])
    return width, height


def dead_port() -> int:
    """Return a local TCP port that nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
