"""The limiter caps generations in flight, for one client and for clients sharing it."""

from __future__ import annotations

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

from ._helpers import SPEED, client_for, slots

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_map_of_two_thousand_never_passes_max_concurrency() -> None:
    """A 2,000-task map with max_concurrency=16 never has more than 16 tasks running upstream."""
    cap = 16
    async with Emulator(speed=SPEED, credits=None) as emu:
        async with client_for(emu, max_concurrency=cap) as client:
            prompts = (f"fan {i}" for i in range(2000))  # lazily, as a generator
            results = await client.map(
                nb.GenerationRequest(prompt=p, model="nano-banana-fast") for p in prompts
            )
            assert slots(client) == 0
            limiter = client.limiter
            assert isinstance(limiter, nb.Limiter)
            assert limiter.max_in_flight == cap
        # In input order, each result the task of its own request.
        assert [emu.tasks[r.task_id].prompt for r in results] == [f"fan {i}" for i in range(2000)]
        assert emu.ledger.tasks_created == 2000
        assert cap // 2 <= emu.ledger.max_running <= cap


async def test_as_completed_never_passes_max_concurrency() -> None:
    """as_completed with max_concurrency=4 yields every task (failed too), never running over 4."""
    cap = 4
    async with Emulator(speed=SPEED, credits=None, failure_rate=0.1) as emu:
        async with client_for(emu, max_concurrency=cap) as client:
            done = [task async for task in client.as_completed(f"p{i}" for i in range(120))]
            assert slots(client) == 0
        assert len({task.id for task in done}) == 120
        assert all(task.done() for task in done)
        failed = [task for task in done if task.snapshot.status is nb.TaskStatus.FAILED]
        assert len(failed) == sum(t.outcome == "failed" for t in emu.tasks.values())
        assert 1 <= emu.ledger.max_running <= cap


async def test_shared_limiter_caps_two_clients_together() -> None:
    """Two clients sharing Limiter(max_concurrency=6) never have more than 6 tasks running."""
    cap = 6
    limiter = nb.Limiter(max_concurrency=cap)
    async with Emulator(speed=SPEED, credits=None) as emu:
        async with client_for(emu, limiter=limiter) as one, client_for(emu, limiter=limiter) as two:
            counts: list[int] = []

            async def run(client: nb.Client, name: str) -> None:
                results = await client.map(f"{name} {i}" for i in range(150))
                counts.append(len(results))

            async with anyio.create_task_group() as group:
                group.start_soon(run, one, "one")
                group.start_soon(run, two, "two")
            assert counts == [150, 150]
            assert one.limiter is two.limiter is limiter
        assert limiter.in_flight == 0
        assert limiter.max_in_flight == cap
        assert emu.ledger.tasks_created == 300
        assert cap // 2 <= emu.ledger.max_running <= cap


async def test_time_queued_in_the_limiter_is_not_a_network_timeout() -> None:
    """Submits queued behind max_concurrency=1 for longer than Timeouts(request=...) succeed."""
    async with Emulator(speed=SPEED, duration=250.0) as emu:  # 0.25 s per task
        timeouts = nb.Timeouts(request=0.1)
        async with client_for(emu, max_concurrency=1, timeouts=timeouts) as client:
            results = await client.map(["first", "second", "third"])
        assert [r.snapshot.status for r in results] == [nb.TaskStatus.SUCCEEDED] * 3
        assert emu.ledger.creates_received == 3
        assert emu.ledger.max_running == 1


async def test_closing_one_client_frees_only_its_own_slots() -> None:
    """Closing one of two clients sharing a limiter frees its slots; the other's tasks go on."""
    limiter = nb.Limiter(max_concurrency=4)
    async with Emulator(speed=SPEED, duration=200.0) as emu:
        async with client_for(emu, limiter=limiter) as staying:
            async with client_for(emu, limiter=limiter) as leaving:
                kept = [await staying.submit(f"kept {i}") for i in range(2)]
                dropped = [await leaving.submit(f"dropped {i}") for i in range(2)]
                assert limiter.in_flight == 4
            assert limiter.in_flight == 2
            for task in dropped:
                with pytest.raises(nb.ClientClosedError):
                    await task.wait()
            for task in kept:
                assert (await task.wait()).snapshot.status is nb.TaskStatus.SUCCEEDED
            assert limiter.in_flight == 0
