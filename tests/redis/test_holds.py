"""RedisLimiter keeps the slot of an uncertain create after its client (or itself) closes."""

from __future__ import annotations

import asyncio
import os

import anyio
import pytest
import redis.asyncio
from _redis_support import RedisServer

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

pytestmark = pytest.mark.anyio

# The emulator at speed 5 runs a nano-banana generation for 10 / 5 = 2 s; clients poll at speed
# 2.5, so an uncertain create's hold is 20 / 2.5 = 8 s (a wide window under load).
SPEED = 5.0
POLL_SPEED = 2.5


def _name() -> str:
    return f"hold-{os.urandom(4).hex()}"


def _client(emu: Emulator, limiter: nb.RedisLimiter) -> nb.Client:
    return nb.Client(
        emu.api_key, base_url=emu.base_url, poll=nb.PollPolicy(speed=POLL_SPEED), limiter=limiter
    )


async def _lose_one_create(emu: Emulator, limiter: nb.RedisLimiter) -> None:
    """Submit a create whose answer is lost, then close its client (within the hold)."""
    emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
    first = _client(emu, limiter)
    with pytest.raises(nb.SubmitUncertainError):
        await first.submit("lost answer", model="nano-banana")
    await first.aclose()


async def test_a_held_slot_stays_taken_after_its_client_closes(redis_server: RedisServer) -> None:
    """Another client of the same RedisLimiter waits for the rest of a closed client's hold, so
    the server never runs two generations with max_concurrency=1."""
    name = _name()
    async with (
        Emulator(speed=SPEED, duration=10.0, credits=None) as emu,
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1) as limiter,
    ):
        await _lose_one_create(emu, limiter)
        assert limiter.held == 1  # the limiter keeps the slot for the rest of the hold
        async with _client(emu, limiter) as second:
            with anyio.fail_after(60):
                task = await second.submit("must wait", model="nano-banana")
                await task.wait()
        assert emu.ledger.creates_received == 2
        assert emu.ledger.max_running == 1
        assert limiter.held == 0


async def test_a_closing_limiter_leaves_a_held_slot_to_lapse(
    redis_server: RedisServer,
) -> None:
    """A RedisLimiter closed during a hold does not give the slot back: it stays in Redis until
    its lease lapses, and another process's limiter waits for it."""
    name = _name()
    leases = f"nanobanana:{{{name}}}:leases"
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with Emulator(speed=SPEED, duration=10.0, credits=None) as emu:
            limiter = nb.RedisLimiter(
                redis_server.url, name=name, max_concurrency=1, lease_seconds=6.0
            )
            async with limiter:
                await _lose_one_create(emu, limiter)
            assert int(await raw.zcard(leases)) == 1  # closed, and the slot is still taken
            async with nb.RedisLimiter(
                redis_server.url, name=name, max_concurrency=1, lease_seconds=6.0
            ) as other:
                waiter = asyncio.ensure_future(other.acquire())
                # The kept lease has at least 3 s of its 6 left (renewed once 2 s old, checked
                # every 1 s).
                await asyncio.wait({waiter}, timeout=1.0)
                assert not waiter.done()
                with anyio.fail_after(30):
                    lease = await waiter  # the kept lease lapses (at most lease_seconds)
                await other.release(lease)
    finally:
        await raw.aclose()
