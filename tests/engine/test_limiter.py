"""The limiter caps generations in flight, for one client and for clients sharing it."""

from __future__ import annotations

import asyncio
import logging

import anyio
import anyio.lowlevel
import pytest

import nanobanana_async as nb
from nanobanana_async.limiters import Lease, RequestKind
from nanobanana_async.testing import Emulator

from ._helpers import SPEED, client_for, held_emulator, slots, wait_for

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_map_of_two_thousand_never_passes_max_concurrency() -> None:
    """A 2,000-task map with max_concurrency=16 fills its 16 slots and never runs more upstream."""
    cap = 16
    async with held_emulator(credits=None) as (emu, hold):
        async with client_for(emu, max_concurrency=cap) as client:
            limiter = client.limiter
            assert isinstance(limiter, nb.Limiter)
            prompts = (f"fan {i}" for i in range(2000))  # lazily, as a generator
            results: list[nb.TaskResult] = []

            async def fan_out() -> None:
                fast = "nano-banana-fast"
                requests = (nb.GenerationRequest(prompt=p, model=fast) for p in prompts)
                results.extend(await client.map(requests))

            async with anyio.create_task_group() as group:
                group.start_soon(fan_out)
                # While no task can be seen to end, the map fills every slot and then waits.
                await wait_for(lambda: emu.ledger.creates_received == cap)
                # Every one of them has ended upstream and was polled since: still no 17th.
                await wait_for(lambda: len(hold.hidden) == cap)
                assert limiter.in_flight == cap
                assert emu.ledger.creates_received == cap
                hold.release()
            assert slots(client) == 0
            assert limiter.max_in_flight == cap
        # In input order, each result the task of its own request.
        assert [emu.tasks[r.task_id].prompt for r in results] == [f"fan {i}" for i in range(2000)]
        assert emu.ledger.tasks_created == 2000
        assert emu.ledger.max_running <= cap


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
    """Two clients sharing Limiter(max_concurrency=6) fill its 6 slots and never run more."""
    cap = 6
    limiter = nb.Limiter(max_concurrency=cap)
    async with held_emulator(credits=None) as (emu, hold):
        async with client_for(emu, limiter=limiter) as one, client_for(emu, limiter=limiter) as two:
            counts: list[int] = []

            async def run(client: nb.Client, name: str) -> None:
                results = await client.map(f"{name} {i}" for i in range(150))
                counts.append(len(results))

            async with anyio.create_task_group() as group:
                group.start_soon(run, one, "one")
                group.start_soon(run, two, "two")
                # While no task can be seen to end, the two clients fill the shared slots.
                await wait_for(lambda: emu.ledger.creates_received == cap)
                await wait_for(lambda: len(hold.hidden) == cap)
                assert limiter.in_flight == cap
                assert emu.ledger.creates_received == cap
                assert one.in_flight + two.in_flight == cap
                hold.release()
            assert counts == [150, 150]
            assert one.limiter is two.limiter is limiter
        assert limiter.in_flight == 0
        assert limiter.max_in_flight == cap
        assert emu.ledger.tasks_created == 300
        assert emu.ledger.max_running <= cap


async def test_time_queued_in_the_limiter_is_not_a_network_timeout() -> None:
    """A submit queued behind max_concurrency=1 for longer than Timeouts(request=...) succeeds."""
    request_timeout = 0.5  # ample for one local exchange, even on a loaded machine
    async with held_emulator() as (emu, hold):
        timeouts = nb.Timeouts(request=request_timeout)
        async with client_for(emu, max_concurrency=1, timeouts=timeouts) as client:
            results: list[nb.TaskResult] = []

            async def fan_out() -> None:
                results.extend(await client.map(["first", "second"]))

            async with anyio.create_task_group() as group:
                group.start_soon(fan_out)
                await wait_for(lambda: emu.ledger.creates_received == 1)
                # "second" has been queued since before "first" was created: hold the slot
                # for longer than the request timeout, so its wait in the queue exceeds it.
                await anyio.sleep(request_timeout * 1.5)
                assert emu.ledger.creates_received == 1
                hold.release()
        assert [r.snapshot.status for r in results] == [nb.TaskStatus.SUCCEEDED] * 2
        assert emu.ledger.creates_received == 2
        assert emu.ledger.max_running == 1


async def test_closing_one_client_frees_only_its_own_slots() -> None:
    """Closing one of two clients sharing a limiter frees its slots; the other's tasks go on."""
    limiter = nb.Limiter(max_concurrency=4)
    async with held_emulator(duration=20.0) as (emu, hold):
        async with client_for(emu, limiter=limiter) as staying:
            async with client_for(emu, limiter=limiter) as leaving:
                kept = [await staying.submit(f"kept {i}") for i in range(2)]
                dropped = [await leaving.submit(f"dropped {i}") for i in range(2)]
                assert limiter.in_flight == 4
            assert limiter.in_flight == 2
            for task in dropped:
                with pytest.raises(nb.errors.ClientClosedError):
                    await task.wait()
            hold.release()
            for task in kept:
                assert (await task.wait()).snapshot.status is nb.TaskStatus.SUCCEEDED
            assert limiter.in_flight == 0


async def test_ready_nowait_takes_a_token_only_when_no_wait_is_needed() -> None:
    """ready_nowait takes a rate token when one is at hand, and refuses during a pause or when
    the bucket is empty, or for a subclass whose own `ready` must run."""
    limiter = nb.Limiter(max_requests_per_second=0.001, burst=2)
    assert limiter.ready_nowait("poll") is True
    assert limiter.ready_nowait("create") is True
    assert limiter.ready_nowait("poll") is False  # the burst of 2 is spent: ready() must wait

    paused = nb.Limiter()
    assert paused.ready_nowait() is True  # no rate cap: always at once
    await paused.pause(60)
    assert paused.ready_nowait() is False

    class Logged(nb.Limiter):
        async def ready(self, kind: RequestKind = "create") -> None:
            await super().ready(kind)

    assert Logged().ready_nowait() is False


async def test_polls_run_in_at_most_max_connections_workers_that_end_with_the_client() -> None:
    """Polls of 40 tasks with max_connections=3 run in 1 to 3 reused worker tasks, none left
    after the client closes."""

    def workers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if "PollScheduler._worker" in t.get_name()]

    async with Emulator(speed=SPEED, credits=None) as emu:
        client = client_for(emu, max_connections=3, max_concurrency=None)
        async with client:
            results = await client.map(f"p{i}" for i in range(40))
            assert len(results) == 40
            assert 1 <= len(workers()) <= 3
            assert emu.ledger.polls_received >= 40  # many more polls than workers
        assert workers() == []


async def test_acquire_and_reserve_nowait_never_jump_the_queue_or_the_budget() -> None:
    """acquire_nowait takes a free slot but none while someone waits for one, and reserve_nowait
    holds the budget like reserve; subclasses overriding the async methods get them called."""
    limiter = nb.Limiter(max_concurrency=1, max_credits=20)
    first = limiter.acquire_nowait()
    assert first is not None
    assert limiter.in_flight == 1
    assert limiter.acquire_nowait() is None  # no slot free
    async with anyio.create_task_group() as group:
        group.start_soon(limiter.acquire)  # queues for the slot
        for _ in range(3):  # let it start and queue (it cannot get the slot: none is free)
            await anyio.lowlevel.checkpoint()
        await limiter.release(first)
        # The slot went to the waiter: a nowait caller does not take it from under it.
        assert limiter.acquire_nowait() is None
    assert limiter.in_flight == 1

    assert limiter.reserve_nowait(15) is True
    with pytest.raises(nb.BudgetExceededError):
        limiter.reserve_nowait(15)
    assert limiter.committed_credits == 15

    class Counted(nb.Limiter):
        async def acquire(self) -> Lease:
            return await super().acquire()

        async def reserve(self, credits: int) -> None:
            await super().reserve(credits)

    assert Counted().acquire_nowait() is None
    assert Counted().reserve_nowait(1) is False


async def test_each_stretch_of_waiting_for_a_slot_is_told_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait for a Limiter slot past TOLD_WAIT is logged at INFO once per stretch of waiting,
    again after the last waiter gave up, and a free slot logs nothing."""
    import nanobanana_async._limiter as limiter_module

    monkeypatch.setattr(limiter_module, "TOLD_WAIT", 0.05)
    caplog.set_level(logging.INFO, logger="nanobanana_async")

    def told() -> int:
        return sum("wait over" in record.getMessage() for record in caplog.records)

    limiter = nb.Limiter(max_concurrency=1)
    lease = await limiter.acquire()  # free: nothing to tell
    assert told() == 0
    for stretch in (1, 2):
        waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(2)]
        await wait_for(lambda stretch=stretch: told() == stretch)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert told() == stretch  # one line for the two waiters of this stretch
    assert "2 create(s) wait over 0 s for a slot of the limiter: 1 of 1" in caplog.text
    await limiter.release(lease)
    assert limiter.in_flight == 0
