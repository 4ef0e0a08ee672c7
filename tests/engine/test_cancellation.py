"""Deadlines, cancellation and closing: each touches only what it should, and frees every slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import (
    SPEED,
    assert_no_resource_warning,
    client_for,
    established_to,
    gated_emulator,
    held_emulator,
    no_task_left_behind,
    port_of,
    records,
    slots,
    wait_for,
)

pytestmark = pytest.mark.anyio

#: Emulated seconds that keep a task running for the whole test (100 s of real time).
FOREVER = 100_000.0


async def cancel_when(condition: Callable[[], bool], scope: anyio.CancelScope) -> None:
    """Cancel *scope* as soon as ``condition()`` holds (an event, not a timer)."""
    await wait_for(condition)
    scope.cancel()


class StoreLimiter(nb.limiters.BaseLimiter):
    """A limiter whose release awaits, as a shared store's (Redis) does."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self._count = 0

    async def acquire(self) -> nb.limiters.Lease:
        self._count += 1
        self.held.add(str(self._count))
        return nb.limiters.Lease(str(self._count))

    async def release(self, lease: nb.limiters.Lease) -> None:
        await anyio.sleep(0.01)  # a round trip to the store
        self.held.discard(lease.token)

    async def pause(self, seconds: float) -> None:
        pass

    async def ready(self, kind: nb.limiters.RequestKind = "create") -> None:
        pass


async def test_task_deadline_raises_and_frees_the_slot() -> None:
    """Timeouts(task=...) makes wait() raise TaskTimeoutError with the id, and frees the slot."""
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        timeouts = nb.Timeouts(task=0.1)
        async with client_for(emu, max_concurrency=1, timeouts=timeouts) as client:
            task = await client.submit("too slow")
            with pytest.raises(nb.TaskTimeoutError) as caught:
                await task.wait()
            assert caught.value.task_id == task.id
            assert isinstance(caught.value, TimeoutError)
            assert task.done()
            assert client.in_flight == 0
            assert slots(client) == 0
            with pytest.raises(nb.TaskTimeoutError):
                async for _ in task.updates():
                    pass
            with anyio.fail_after(10):  # the only slot is free again (else this would hang)
                await client.submit("next")


async def test_wait_timeout_leaves_the_task_tracked() -> None:
    """wait(timeout=...) raises TaskTimeoutError but the task stays tracked and can be awaited."""
    async with held_emulator(duration=20.0) as (emu, hold):
        async with client_for(emu) as client:
            task = await client.submit("take your time")
            with pytest.raises(nb.TaskTimeoutError) as caught:
                await task.wait(timeout=0.02)
            assert caught.value.task_id == task.id
            assert client.in_flight == 1
            assert slots(client) == 1
            hold.release()
            result = await task.wait()
            assert result.task_id == task.id
            assert slots(client) == 0


async def test_cancelling_a_wait_touches_nothing_else() -> None:
    """A wait() cancelled by a timeout scope leaves the task running for its other waiters."""
    async with held_emulator(duration=20.0) as (emu, hold):
        async with client_for(emu) as client:
            task = await client.submit("shared")
            results: list[nb.TaskResult] = []
            async with anyio.create_task_group() as group:

                async def patient() -> None:
                    results.append(await task.wait())

                group.start_soon(patient)
                with anyio.move_on_after(0.02) as scope:
                    await task.wait()
                assert not task.done()
                hold.release()
            assert scope.cancelled_caught
            assert results[0].task_id == task.id
            assert client.in_flight == 0
            assert slots(client) == 0
            assert results[0] == await task.wait()


async def test_cancelling_an_updates_loop_touches_nothing_else() -> None:
    """An updates() loop cancelled mid-way leaves the task and a second follower unharmed."""
    async with held_emulator(duration=200.0) as (emu, hold):
        async with client_for(emu) as client:
            task = await client.submit("followed")
            first: list[nb.TaskSnapshot] = []
            second: list[nb.TaskSnapshot] = []

            async def follow(into: list[nb.TaskSnapshot], scope: anyio.CancelScope) -> None:
                with scope:
                    async for snapshot in task.updates():
                        into.append(snapshot)
                        if into is first and snapshot.progress > 0:
                            scope.cancel()

            async with anyio.create_task_group() as group:
                cut = anyio.CancelScope()
                group.start_soon(follow, first, cut)
                group.start_soon(follow, second, anyio.CancelScope())
                # The task cannot be seen to end before the first loop is cut.
                await wait_for(lambda: cut.cancel_called)
                hold.release()
            assert cut.cancelled_caught
            assert not first[-1].is_terminal
            assert second[-1].status is nb.TaskStatus.SUCCEEDED
            assert [s.progress for s in second] == sorted(s.progress for s in second)
            assert task.done()
            assert slots(client) == 0
            # A new loop on the finished task yields the terminal snapshot and ends.
            assert [s async for s in task.updates()] == [second[-1]]


async def test_cancelling_a_submit_mid_create_never_loses_the_task() -> None:
    """A submit cancelled while its create is on the wire leaves the created task tracked."""
    async with gated_emulator(duration=20.0) as (emu, gate, hold):
        async with client_for(emu, max_concurrency=2) as client:
            async with anyio.create_task_group() as group:
                with anyio.CancelScope() as scope:
                    group.start_soon(cancel_when, lambda: gate.waiting == 1, scope)
                    await client.submit("cancelled caller")
            assert scope.cancelled_caught
            assert slots(client) == 1  # the create on the wire holds its slot
            assert client.in_flight == 0
            gate.open()
            await wait_for(lambda: client.in_flight == 1)
            (task_id,) = emu.tasks
            task = client.task(task_id)
            assert client.in_flight == 1  # attaching found the tracked task
            assert slots(client) == 1
            hold.release()
            result = await task.wait()
            assert result.task_id == task_id
            assert client.in_flight == 0
            assert slots(client) == 0
            assert client.credits.charged == 15
            assert client.credits.reserved == 0
        assert emu.ledger.creates_received == 1


async def test_cancelling_a_submit_waiting_for_a_slot_sends_nothing() -> None:
    """A submit cancelled while queued in the limiter sends no create and reserves nothing."""
    async with held_emulator(duration=20.0) as (emu, hold):
        async with client_for(emu, max_concurrency=1, max_credits=1000) as client:
            holder = await client.submit("holds the slot")
            with anyio.move_on_after(0.02) as scope:
                await client.submit("queued")
            assert scope.cancelled_caught
            assert client.credits.reserved == 0
            hold.release()
            await holder.wait()
            assert slots(client) == 0
        assert len(records(emu, "create")) == 1


async def test_cancelling_a_submit_in_its_retry_backoff_frees_the_slot() -> None:
    """A submit cancelled in its backoff before a create retry sends no more and frees its slot."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.status(503), endpoint="create")
        events: list[nb.events.RetryEvent] = []
        retry = nb.RetryPolicy(initial_backoff=5.0, jitter=False, resend_on_503=True)
        async with client_for(emu, retry=retry, max_credits=1000) as client:
            client.add_retry_listener(events.append)
            async with anyio.create_task_group() as group:
                with anyio.CancelScope() as scope:
                    # Cancelled once the 503 is in: the submit is in its 5 s backoff.
                    group.start_soon(cancel_when, lambda: bool(events), scope)
                    await client.submit("backing off")
            assert scope.cancelled_caught
            assert slots(client) == 0
            assert client.credits.reserved == 0
        assert len(records(emu, "create")) == 1


async def test_closing_the_client_frees_everything() -> None:
    """aclose() wakes waiters, followers and queued submits with ClientClosedError, frees slots."""
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        async with no_task_left_behind():
            client = client_for(emu, max_concurrency=3)
            tasks = [await client.submit(f"long {i}") for i in range(3)]
            errors: dict[str, BaseException] = {}

            async def catch(name: str, started: anyio.Event, job: object) -> None:
                started.set()
                try:
                    if name.startswith("follow"):
                        async for _ in tasks[0].updates():
                            pass
                    elif name == "submit":
                        await client.submit("no slot left")
                    else:
                        await tasks[int(name[-1])].wait()
                except nb.NanoBananaError as exc:
                    errors[name] = exc

            async with anyio.create_task_group() as group:
                names = ["wait 0", "wait 1", "wait 2", "follow 0", "submit"]
                for name in names:
                    started = anyio.Event()
                    group.start_soon(catch, name, started, None)
                    await started.wait()
                await anyio.lowlevel.checkpoint()  # let the last one reach its await
                assert slots(client) == 3
                await client.aclose()
            assert sorted(errors) == sorted(names)
            assert all(isinstance(e, nb.errors.ClientClosedError) for e in errors.values()), errors
            assert client.closed
            assert client.in_flight == 0
            assert slots(client) == 0
            assert all(task.done() for task in tasks)
            with pytest.raises(nb.errors.ClientClosedError):
                await tasks[0].wait()
            with pytest.raises(nb.errors.ClientClosedError):
                await client.submit("after close")
            await client.aclose()  # twice is harmless
            await wait_for(lambda: established_to(port_of(emu)) == 0)  # no socket left
        assert len(records(emu, "create")) == 3
    assert_no_resource_warning()


async def test_closing_the_client_during_a_create() -> None:
    """aclose() while a create is on the wire ends that submit with an error, not CancelledError."""
    async with gated_emulator() as (emu, gate, _):
        async with no_task_left_behind():
            client = client_for(emu, max_concurrency=2)
            outcome: list[BaseException] = []

            async def submit() -> None:
                try:
                    await client.submit("on the wire")
                except BaseException as exc:  # CancelledError too: nobody cancelled this caller
                    outcome.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(submit)
                await wait_for(lambda: gate.waiting == 1)  # the create waits on the emulator
                await client.aclose()
            assert len(outcome) == 1
            expected = (nb.errors.ClientClosedError, nb.SubmitUncertainError)
            assert isinstance(outcome[0], expected), outcome
            # An uncertain create's slot stays with the limiter for the rest of its hold (20 ms).
            await wait_for(lambda: slots(client) == 0)
            gate.open()  # the emulator's handler then finds the connection gone, and ends
    assert_no_resource_warning()


async def test_closing_the_client_releases_every_slot_of_a_shared_store() -> None:
    """aclose() returns only once every slot of an awaiting (store-backed) limiter is released."""
    limiter = StoreLimiter()
    async with Emulator(speed=SPEED, duration=FOREVER) as emu:
        async with no_task_left_behind():
            async with client_for(emu, limiter=limiter) as client:
                for i in range(3):
                    await client.submit(f"long {i}")
                assert len(limiter.held) == 3
            assert limiter.held == set()
    assert_no_resource_warning()


async def test_closing_the_client_lets_pending_releases_finish() -> None:
    """aclose() right after a task ended still completes that task's slot release in the store."""
    limiter = StoreLimiter()
    async with Emulator(speed=SPEED) as emu:
        async with no_task_left_behind():
            async with client_for(emu, limiter=limiter) as client:
                await client.generate("quick")
                assert len(limiter.held) == 1  # its release is on its way to the store
            assert limiter.held == set()
    assert_no_resource_warning()


async def test_closing_the_client_with_polls_on_the_wire() -> None:
    """aclose() with polls hanging on the wire stops them all and leaves no task behind."""
    async with no_task_left_behind():
        async with Emulator(speed=SPEED, duration=FOREVER) as emu:
            hung = emu.faults.inject(Fault.hang(), endpoint="result")
            async with client_for(emu, max_concurrency=None) as client:
                tasks = [await client.submit(f"hung {i}") for i in range(4)]
                await wait_for(lambda: hung.fired == 4)
            assert all(task.done() for task in tasks)
            assert slots(client) == 0
            with pytest.raises(nb.errors.ClientClosedError):
                await tasks[0].wait()
    assert_no_resource_warning()


@pytest.mark.parametrize(
    "fault",
    [None, Fault.status(503), Fault.rate_limit(retry_after=0.01), Fault.drop_before()],
    ids=["ok", "503", "429", "drop_before"],
)
async def test_cancelling_a_submit_at_any_point_frees_its_slot(fault: Fault | None) -> None:
    """A submit cancelled after any number of loop turns never leaks a slot or a reservation."""
    async with Emulator(speed=SPEED, credits=None) as emu:
        # A 503 is re-sent only by opt-in (by default it may have been charged).
        retry = nb.RetryPolicy(sleep=False, resend_on_503=True)
        async with client_for(emu, max_concurrency=2, max_credits=10_000, retry=retry) as client:
            for turns in range(16):
                if fault is not None:
                    emu.faults.inject(fault, endpoint="create", times=1)
                submit = asyncio.ensure_future(client.submit(f"cut after {turns}"))
                for _ in range(turns):
                    await asyncio.sleep(0)
                submit.cancel()
                await asyncio.wait([submit])
                await wait_for(lambda: slots(client) == 0 and client.in_flight == 0)
                assert client.credits.reserved == 0
            # Every task created is counted; a dropped create also counts (it may have been).
            assert client.credits.charged >= 15 * emu.ledger.tasks_created
            if fault is None or fault.name != "drop_before":
                assert client.credits.charged == 15 * emu.ledger.tasks_created
        assert emu.ledger.tasks_created <= 16
