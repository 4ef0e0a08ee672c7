"""Helpers for the batch tests: a fast client for an emulator, and journal readers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from _emulator_hold import Hold
from _emulator_hold import held_emulator as held

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


@asynccontextmanager
async def held_emulator(**options: Any) -> AsyncIterator[tuple[Emulator, Hold]]:
    """Start an emulator (speed 1000, images downscaled by 8) whose tasks are held running."""
    options.setdefault("image_downscale", 8)
    async with held(**options) as started:
        yield started
