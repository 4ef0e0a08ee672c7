"""Plain-aiohttp helpers for the emulator tests; nothing here comes from the client."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
import anyio

from nanobanana_async.testing import Emulator

CREATE = "/api/v1/image/nano-banana"
RESULT = "/api/v1/image/nano-banana/result"


def auth(key: str | None) -> dict[str, str]:
    """Return the Authorization header for ``key`` (none for None)."""
    return {} if key is None else {"Authorization": f"Bearer {key}"}


async def read_body(response: aiohttp.ClientResponse) -> Any:
    """Return the parsed JSON body, or the text when it is not JSON."""
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return text


async def create(
    session: aiohttp.ClientSession,
    emu: Emulator,
    *,
    json_body: Any = None,
    form: aiohttp.FormData | None = None,
    key: str | None = "",
) -> tuple[int, Any]:
    """POST a create (JSON or multipart) and return (status, body); key "" means emu's key."""
    headers = auth(emu.api_key if key == "" else key)
    kwargs: dict[str, Any] = {"data": form} if form is not None else {"json": json_body}
    async with session.post(emu.base_url + CREATE, headers=headers, **kwargs) as response:
        return response.status, await read_body(response)


async def poll(
    session: aiohttp.ClientSession,
    emu: Emulator,
    task_id: str,
    *,
    key: str | None = "",
    field: str = "taskId",
) -> tuple[int, Any]:
    """POST a result request for ``task_id`` and return (status, body)."""
    headers = auth(emu.api_key if key == "" else key)
    url = emu.base_url + RESULT
    async with session.post(url, json={field: task_id}, headers=headers) as response:
        return response.status, await read_body(response)


async def wait_until_done(
    session: aiohttp.ClientSession, emu: Emulator, task_id: str, *, max_polls: int = 2000
) -> list[dict[str, Any]]:
    """Poll until the task leaves ``running``; return every ``data`` seen, in order."""
    seen = []
    for _ in range(max_polls):
        status, body = await poll(session, emu, task_id)
        assert status == 200, body
        seen.append(body["data"])
        if body["data"]["status"] != "running":
            return seen
        await anyio.sleep(0.001)
    raise AssertionError(f"task {task_id} still running after {max_polls} polls")


async def wait_for(condition: Callable[[], bool], *, max_checks: int = 3000) -> None:
    """Wait (in 1 ms steps, boundedly) until ``condition()`` holds."""
    for _ in range(max_checks):
        if condition():
            return
        await anyio.sleep(0.001)
    raise AssertionError("condition never held")


def text_to_image(**overrides: Any) -> dict[str, Any]:
    """Return a valid JSON create body, with ``overrides`` applied."""
    return {"prompt": "a banana cat", "model": "nano-banana", **overrides}


def make_png(width: int = 2, height: int = 2) -> bytes:
    """Build a tiny valid RGB PNG by hand (independently of the emulator)."""
    raw = b"".join(b"\x00" + bytes([200, 180, 40]) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking the signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    return chunks


def png_size_of(data: bytes) -> tuple[int, int]:
    """Return (width, height) from the IHDR of a PNG, checking it is 8-bit RGB."""
    ihdr = png_chunks(data)[0][1]
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", ihdr
    )
    assert (depth, colour, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    return width, height
