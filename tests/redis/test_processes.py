"""Several worker processes share one key through a RedisLimiter, against the emulator."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _redis_support import RedisServer, Worker, warm

from nanobanana_async.testing import Emulator, Fault

pytestmark = pytest.mark.anyio

KEY = "nb-redis-test-key"


async def _run_all(workers: list[Worker]) -> list[dict[str, int]]:
    try:
        return [await worker.summary() for worker in workers]
    finally:
        for worker in workers:
            await worker.aclose()


async def _config(emu: Emulator, server: RedisServer, **more: Any) -> dict[str, Any]:
    """The workers' config, on a new name whose store is warm (its grace over)."""
    name = f"test-{os.urandom(4).hex()}"
    await warm(server.url, name)
    return {"base_url": emu.base_url, "api_key": KEY, "redis_url": server.url, "name": name, **more}


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An emulator whose tasks all take 12 emulated seconds, 0.6 s of real time."""
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=12.0) as emu:
        yield emu


async def test_four_workers_share_a_cap_of_six(redis_server: RedisServer) -> None:
    """4 processes x 15 tasks with a shared cap of 6: never more than 6 run, and 6 do run."""
    # Tasks take 0.7 s of real time: the first six creates all land before the first task ends.
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=14.0) as emu:
        config = await _config(emu, redis_server, cap=6, speed=20.0, duration=14.0, tasks=15)
        workers = [await Worker.start(worker=n, wait_go=True, **config) for n in range(4)]
        for worker in workers:
            await worker.wait_for("ready")
        # Everyone queues at once, so that the cap fills at the start.
        for worker in workers:
            worker.go()
        summaries = await _run_all(workers)
    assert [s.get("succeeded") for s in summaries] == [15, 15, 15, 15]
    assert emu.ledger.tasks_created == 60
    assert emu.ledger.max_running == 6


async def test_a_killed_worker_frees_its_slots_within_the_lease(
    redis_server: RedisServer,
) -> None:
    """A worker SIGKILLed holding every slot (and queueing more) stalls the others only briefly."""
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=2000.0) as slow:
        async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=6.0) as fast:
            base = await _config(slow, redis_server, cap=3, lease=2.0, speed=20.0)
            # The victim takes all 3 slots with tasks that would run for 100 s, and queues 3 more.
            victim = await Worker.start(worker="victim", tasks=6, duration=2000.0, **base)
            try:
                await victim.wait_for("created", 3)
            finally:
                victim.kill()
                await victim.reap()
                await victim.aclose()
            others = {**base, "base_url": fast.base_url, "duration": 6.0, "tasks": 3}
            workers = [await Worker.start(worker=n, **others) for n in range(2)]
            summaries = await _run_all(workers)
            assert [s.get("succeeded") for s in summaries] == [3, 3]
            assert fast.ledger.max_running <= 3
            assert slow.ledger.tasks_created == 3


async def test_workers_share_one_credit_budget(
    emulator: Emulator, redis_server: RedisServer
) -> None:
    """3 workers x 5 creates of 5 credits, shared budget 50: 10 sent, 5 refused unsent."""
    config = await _config(
        emulator, redis_server, cap=20, speed=20.0, duration=12.0, tasks=5, max_credits=50
    )
    workers = [await Worker.start(worker=n, **config) for n in range(3)]
    summaries = await _run_all(workers)
    assert sum(s.get("created", 0) for s in summaries) == 10
    assert sum(s.get("over_budget", 0) for s in summaries) == 5
    assert emulator.ledger.creates_received == 10


async def test_refunds_of_failed_tasks_return_to_the_shared_budget(
    redis_server: RedisServer,
) -> None:
    """With every task failing, a budget of 6 tasks lets 3 workers run 9 tasks one after another."""
    async with Emulator(
        api_key=KEY, credits=None, speed=20.0, duration=4.0, failure_rate=1.0
    ) as emu:
        config = await _config(
            emu, redis_server, cap=20, speed=20.0, duration=4.0, tasks=3, max_credits=30
        )
        workers = [await Worker.start(worker=n, sequential=True, **config) for n in range(3)]
        summaries = await _run_all(workers)
    assert [s.get("failed") for s in summaries] == [3, 3, 3]
    assert sum(s.get("over_budget", 0) for s in summaries) == 0
    assert emu.ledger.tasks_created == 9


async def test_a_429_pauses_every_worker(emulator: Emulator, redis_server: RedisServer) -> None:
    """After one worker's create gets 429 with Retry-After: 3, no worker's create leaves for 3 s."""
    emulator.faults.inject(Fault.rate_limit(retry_after=3.0), endpoint="create", times=1)
    config = await _config(emulator, redis_server, cap=6, speed=20.0, duration=12.0, tasks=1)
    first = await Worker.start(worker="first", **config)
    second = await Worker.start(worker="second", wait_go=True, **config)
    try:
        await second.wait_for("ready")
        await first.wait_for("retrying")  # its pause is in Redis by now
        second.go()
        summaries = await _run_all([first, second])
    finally:
        await first.aclose()
        await second.aclose()
    assert [s.get("succeeded") for s in summaries] == [1, 1]
    creates = [r for r in emulator.requests if r.endpoint == "create"]
    refused = [r for r in creates if r.status == 429]
    assert len(refused) == 1
    later = [r.real_time - refused[0].real_time for r in creates if r.status == 200]
    assert len(later) == 2
    # Redis' clock and ours agree to the millisecond on one machine.
    assert min(later) >= 3.0 - 0.01


async def test_a_redis_restart_mid_run_neither_passes_the_cap_nor_loses_a_task(
    own_redis_server: RedisServer,
) -> None:
    """Redis restarted empty while 3 workers run: all 18 tasks finish, never more than 4 at once."""
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=20.0) as emu:
        config = await _config(
            emu,
            own_redis_server,
            cap=4,
            lease=3.0,
            speed=20.0,
            duration=20.0,
            tasks=6,
            retry_unavailable=True,
        )
        workers = [await Worker.start(worker=n, **config) for n in range(3)]
        try:
            # Restart while the first tasks run (each takes 1 s of real time).
            for worker in workers:
                await worker.wait_for("created")
            own_redis_server.restart()
            summaries = await _run_all(workers)
        finally:
            for worker in workers:
                await worker.aclose()
        assert [s.get("succeeded") for s in summaries] == [6, 6, 6]
        assert emu.ledger.tasks_created == 18
        assert emu.ledger.max_running <= 4
