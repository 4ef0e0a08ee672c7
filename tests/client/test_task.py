"""Task handles: waiting, updates, awaiting, timeouts and failures."""

from __future__ import annotations

import anyio
import pytest

import nanobanana_async as nb

from ._helpers import emulator, held_emulator, make_client

pytestmark = pytest.mark.anyio


async def _collect(task: nb.Task) -> list[nb.TaskSnapshot]:
    return [snapshot async for snapshot in task.updates()]


async def test_several_waiters_and_iterators_on_one_task(client: nb.Client) -> None:
    """Three waiters and two updates() iterators on one task all see the same ending."""
    task = await client.submit("a banana cat", model="nano-banana-pro")
    results: list[nb.TaskResult] = []
    streams: list[list[nb.TaskSnapshot]] = []

    async def wait() -> None:
        results.append(await task.wait())

    async def follow() -> None:
        streams.append(await _collect(task))

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(wait)
        for _ in range(2):
            group.start_soon(follow)

    assert len(results) == 3
    assert all(result == results[0] for result in results)
    assert results[0].task_id == task.id
    assert len(streams) == 2
    for stream in streams:
        assert stream, "updates() yielded nothing"
        assert stream[-1].status is nb.TaskStatus.SUCCEEDED
        assert stream[-1].progress == 100
        assert all(s.status is nb.TaskStatus.RUNNING for s in stream[:-1])
        progress = [s.progress for s in stream]
        assert progress == sorted(progress)
        assert all(s.id == task.id for s in stream)


async def test_updates_after_the_end_yields_only_the_terminal_snapshot(client: nb.Client) -> None:
    """updates() on a finished task yields its terminal snapshot once and ends."""
    task = await client.submit("a banana cat")
    result = await task
    stream = await _collect(task)
    assert stream == [result.snapshot]


async def test_updates_ends_after_a_failed_snapshot() -> None:
    """updates() of a failed task ends normally with the failed snapshot."""
    async with emulator(failure_rate=1.0) as emu, make_client(emu) as client:
        task = await client.submit("a banana cat")
        stream = await _collect(task)
    assert stream[-1].status is nb.TaskStatus.FAILED
    assert stream[-1].failure_reason in ("error", "input_moderation", "output_moderation")


async def test_await_task_is_wait(client: nb.Client) -> None:
    """`await task` returns the same result as task.wait()."""
    task = await client.submit("a banana cat")
    awaited = await task
    waited = await task.wait()
    assert awaited == waited
    assert awaited.images[0].content == "a banana cat"


async def test_wait_timeout_raises_and_the_task_stays_usable() -> None:
    """wait(timeout=) raises TaskTimeoutError with task_id; the task stays tracked and awaitable."""
    # Held running by the emulator until released: it cannot end within the timeout, whatever
    # the load on the machine.
    async with held_emulator(duration=20.0) as (emu, hold), make_client(emu) as client:
        task = await client.submit("a slow banana")
        with pytest.raises(nb.TaskTimeoutError) as info:
            await task.wait(timeout=0.02)
        assert info.value.task_id == task.id
        assert isinstance(info.value, TimeoutError)
        assert isinstance(info.value, nb.TaskError)
        assert task.id in str(info.value)
        assert not task.done()
        assert client.in_flight == 1
        assert task.snapshot.status is nb.TaskStatus.RUNNING

        hold.release()
        result = await task.wait()
    assert result.task_id == task.id
    assert result.snapshot.status is nb.TaskStatus.SUCCEEDED


async def test_wait_timeout_leaves_other_waiters_alone() -> None:
    """One waiter's timeout does not disturb another waiter on the same task."""
    async with held_emulator(duration=20.0) as (emu, hold), make_client(emu) as client:
        task = await client.submit("a slow banana")
        outcomes: list[object] = []

        async def patient() -> None:
            outcomes.append(await task.wait())

        async with anyio.create_task_group() as group:
            group.start_soon(patient)
            with pytest.raises(nb.TaskTimeoutError):
                await task.wait(timeout=0.01)
            assert outcomes == []
            hold.release()
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], nb.TaskResult)


async def test_client_task_deadline_ends_the_task_with_task_timeout_error() -> None:
    """The client's Timeouts(task=) deadline ends a task that runs too long."""
    async with emulator(duration=1e6) as emu:
        async with make_client(emu, timeouts=nb.Timeouts(task=0.05)) as client:
            task = await client.submit("forever")
            with pytest.raises(nb.TaskTimeoutError) as info:
                await task.wait()
            assert info.value.task_id == task.id
            assert task.done()
            assert client.in_flight == 0
            assert client.limiter.in_flight == 0  # type: ignore[attr-defined]


async def test_failed_task_raises_task_failed_error_with_its_reason() -> None:
    """A failed task raises TaskFailedError carrying failure_reason, and its credits come back."""
    async with emulator(failure_rate=1.0, failure_reasons=("output_moderation",)) as emu:
        async with make_client(emu) as client:
            task = await client.submit("a banana cat")
            with pytest.raises(nb.TaskFailedError) as info:
                await task.wait()
            assert client.credits.refunded == 15
            assert client.credits.spent == 0
    error = info.value
    assert error.task_id == task.id
    assert error.failure_reason == "output_moderation"
    assert error.snapshot.status is nb.TaskStatus.FAILED
    assert "output_moderation" in str(error)
    assert emu.tasks[task.id].error is not None
    assert emu.tasks[task.id].error in str(error)
    assert emu.ledger.credits_refunded == 15


async def test_generate_raises_task_failed_error() -> None:
    """generate() raises TaskFailedError for a task that fails."""
    async with emulator(failure_rate=1.0, failure_reasons=("error",)) as emu:
        async with make_client(emu) as client:
            with pytest.raises(nb.TaskFailedError) as info:
                await client.generate("a banana cat")
    assert info.value.failure_reason == "error"


async def test_progress_is_observed_between_submit_and_end() -> None:
    """updates() shows intermediate progress for a long smooth task, never going backwards."""
    # 1,000 emulated seconds at speed 1000: a full real second for the client's first polls
    # (due a few milliseconds after the submit) to find the task part-way, even on a busy machine.
    async with emulator(duration=1000.0) as slow, make_client(slow) as client:
        task = await client.submit("a banana cat")
        stream = await _collect(task)
    middle = [s.progress for s in stream if s.status is nb.TaskStatus.RUNNING]
    assert any(0 < p < 100 for p in middle), middle
    assert [s.progress for s in stream] == sorted(s.progress for s in stream)
