"""Several worker processes share one key through a RedisLimiter, against the emulator."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._support import Worker
from .conftest import RedisServer

pytestmark = pytest.mark.anyio

KEY = "nb-redis-test-key"


async def _run_all(workers: list[Worker]) -> list[dict[str, int]]:
    try:
        return [await worker.summary() for worker in workers]
    finally:
        for worker in workers:
            await worker.aclose()


def _config(emu: Emulator, server: RedisServer, **more: Any) -> dict[str, Any]:
    return {
        "base_url": emu.base_url,
        "api_key": KEY,
        "redis_url": server.url,
        "name": f"test-{os.urandom(4).hex()}",
        **more,
    }


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator whose tasks all take 12 emulated seconds, 0.6 s of real time."""
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=12.0) as emu:
        yield emu


async def test_four_workers_share_a_cap_of_six(
    emulator: Emulator, redis_server: RedisServer
) -> None:
    """4 processes x 25 tasks with a shared cap of 6: never more than 6 run, and 6 do run."""
    config = _config(emulator, redis_server, cap=6, speed=20.0, duration=12.0, tasks=25)
    workers = [await Worker.start(worker=n, wait_go=True, **config) for n in range(4)]
    for worker in workers:
        await worker.wait_for("ready")
    # Everyone queues at once: the first six creates are all sent before the first task ends.
    for worker in workers:
        worker.go()
    summaries = await _run_all(workers)
    assert [s.get("succeeded") for s in summaries] == [25, 25, 25, 25]
    ledger = emulator.ledger
    assert ledger.tasks_created == 100
    assert ledger.max_running == 6

