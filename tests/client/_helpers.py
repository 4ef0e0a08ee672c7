"""Helpers for the client tests: emulator and client factories, PNG bytes and PNG parsing."""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from _emulator_hold import Hold
from _emulator_hold import held_emulator as held

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

#: Emulated seconds per real second, for the emulator and the client's poll timing alike.
SPEED = 1000.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[Emulator]:
    """Start an emulator with fast test defaults (speed 1000, images downscaled by 8)."""
    options.setdefault("speed", SPEED)
    options.setdefault("image_downscale", 8)
    async with Emulator(**options) as emu:
        yield emu


@asynccontextmanager
async def held_emulator(**options: Any) -> AsyncIterator[tuple[Emulator, Hold]]:
    """Start a fast test emulator whose tasks are held running (see `Hold`) until released."""
    options.setdefault("image_downscale", 8)
    async with held(**options) as started:
        yield started


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
