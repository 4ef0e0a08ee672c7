"""The limiter's request-rate cap, and lease renewal for shared limiters."""

from __future__ import annotations

import time

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

from ._helpers import client_for, held_emulator, wait_for

pytestmark = pytest.mark.anyio


async def test_the_rate_cap_spaces_requests_of_the_key() -> None:
    """With max_requests_per_second=20 and burst 1, eight polls take at least 7/20 s in all."""
    limiter = nb.Limiter(max_concurrency=None, max_requests_per_second=20, burst=1)
    async with Emulator(speed=1000) as emu:
        async with client_for(emu, limiter=limiter) as client:
            task = await client.submit("rate")
            await task.wait()
            before = len(emu.requests)
            # One clock (time.monotonic, as the emulator's stamps): none of the eight can leave
            # before this, and the cap spaces them 1/20 s apart after the first one.
            began = time.monotonic()
            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(client.get, task.id)
        stamps = sorted(r.real_time for r in emu.requests[before:])
    assert len(stamps) == 8
    assert stamps[-1] - began >= 7 / 20


class CountingLimiter(nb.limiters.BaseLimiter):
    """A shared-store stand-in: counts acquires, releases and renewals of its leases."""

    def __init__(self) -> None:
        self.inner = nb.Limiter(max_concurrency=4)
        self.renewed: list[nb.limiters.Lease] = []
        self.released: list[nb.limiters.Lease] = []

    async def acquire(self) -> nb.limiters.Lease:
        return await self.inner.acquire()

    async def release(self, lease: nb.limiters.Lease) -> None:
        self.released.append(lease)
        await self.inner.release(lease)

    async def renew(self, lease: nb.limiters.Lease) -> None:
        self.renewed.append(lease)

    async def pause(self, seconds: float) -> None:
        await self.inner.pause(seconds)

    async def ready(self, kind: nb.limiters.RequestKind = "create") -> None:
        await self.inner.ready()


async def test_polls_of_a_live_task_renew_its_lease() -> None:
    """Each poll that finds a task still running renews its lease, which is released at the end."""
    limiter = CountingLimiter()
    async with held_emulator(duration=20.0) as (emu, hold):
        async with client_for(emu, limiter=limiter) as client:
            task = await client.submit("long")
            await wait_for(lambda: task.id in hold.hidden)  # polled at least once while "running"
            hold.release()
            await task.wait()
        running_polls = emu.ledger.polls_received - 1  # the last poll saw it succeed
    assert running_polls >= 1
    assert len(limiter.renewed) == running_polls
    assert set(limiter.renewed) == set(limiter.released)
    assert limiter.inner.in_flight == 0
