"""Issue 16: every claim has one owner, and nothing the client starts outlives `aclose()`."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import anyio
import pytest
from engine._helpers import SPEED, client_for, gated_emulator, held_emulator, slots, wait_for

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

pytestmark = pytest.mark.anyio


def _serves_the_emulator(task: asyncio.Task[object]) -> bool:
    """Whether *task* is the emulator's side of a connection (aiohttp's server or the emulator)."""
    if task.get_name().startswith("emulator-"):
        return True
    code = getattr(task.get_coro(), "cr_code", None)
    filename = "" if code is None else code.co_filename.replace(os.sep, "/")
    return "/aiohttp/web_" in filename or "/nanobanana_async/testing/" in filename


@asynccontextmanager
async def no_task_survives() -> AsyncIterator[None]:
    """Fail unless every asyncio task started inside the block has ended when it exits."""
    before = asyncio.all_tasks()
    yield
    # Every task started in the block counts (the client's host, its anyio group's tasks, raw
    # tasks), except the emulator's handlers, which may still be noticing closed sockets.
    left = {
        task
        for task in asyncio.all_tasks() - before
        if not task.done() and not _serves_the_emulator(task)
    }
    assert not left, f"tasks outlived aclose(): {sorted(task.get_name() for task in left)}"


async def test_no_task_outlives_a_normal_close() -> None:
    """After a plain aclose() with tasks running, no task the client started is still alive."""
    async with held_emulator() as (emu, _hold):
        async with no_task_survives():
            async with client_for(emu) as client:
                for n in range(3):
                    await client.submit(f"held {n}")
                await wait_for(lambda: len(emu.requests) >= 6)


async def test_no_task_outlives_a_close_during_submits() -> None:
    """aclose() while creates wait at the server's door leaves no task of the client behind."""
    async with gated_emulator() as (emu, gate, _hold):
        async with no_task_survives():
            client = client_for(emu, max_concurrency=2)
            submits = [asyncio.ensure_future(client.submit(f"p{n}")) for n in range(4)]
            await wait_for(lambda: gate.waiting == 2)
            await client.aclose()
            outcomes = await asyncio.gather(*submits, return_exceptions=True)
        # Two creates were on the wire (uncertain); two waited for a slot (closed, unsent).
        kinds = sorted(type(outcome).__name__ for outcome in outcomes)
        assert kinds == ["ClientClosedError"] * 2 + ["SubmitUncertainError"] * 2
        assert client.credits.reserved == 0


async def test_no_task_outlives_a_close_during_a_pause() -> None:
    """aclose() while the key is paused by a 429 wakes the waiting create and leaves no task."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.rate_limit(retry_after=60), endpoint="create", times=1)
        async with no_task_survives():
            client = client_for(emu)
            submit = asyncio.ensure_future(client.submit("paused"))
            # The 429 was read (not merely received by the server): the key is paused.
            await wait_for(lambda: client.limiter._paused_until > 0)  # type: ignore[attr-defined]
            await client.aclose()
            with pytest.raises(nb.errors.ClientClosedError):
                await submit
        assert client.credits.reserved == 0


async def test_no_task_outlives_a_cancelled_close() -> None:
    """An aclose() whose caller is cancelled still ends every task of the client."""
    async with held_emulator() as (emu, _hold):
        async with no_task_survives():
            client = client_for(emu)
            await client.submit("held")
            closing = asyncio.ensure_future(client.aclose())
            await asyncio.sleep(0)
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            with anyio.fail_after(10):
                await client.aclose()
        assert client.limiter.in_flight == 0  # type: ignore[attr-defined]


async def test_close_in_the_turn_a_waiting_submit_gets_its_slot() -> None:
    """aclose() in the loop turn in which a waiting submit gets its slot leaks no slot or credit."""
    limiter = nb.Limiter(max_concurrency=1, max_credits=100)
    async with held_emulator() as (emu, _hold):
        lease = await limiter.acquire()
        client = client_for(emu, limiter=limiter)
        submit = asyncio.ensure_future(client.submit("x", model="nano-banana"))
        await wait_for(lambda: limiter._slots.statistics().tasks_waiting == 1)
        assert limiter.release_nowait(lease)
        await client.aclose()  # in the same turn: no await between the two
        with pytest.raises(nb.errors.ClientClosedError):
            await submit
        assert limiter.in_flight == 0
        assert limiter.committed_credits == 0
        assert emu.ledger.creates_received == 0


@asynccontextmanager
async def silent_tls_server() -> AsyncIterator[str]:
    """Yield the https URL of a server that takes a ClientHello and never answers it."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def close_during_handshake(client: nb.Client) -> BaseException:
    """Submit, wait while the TLS handshake hangs, close the client; return what submit raised."""
    submit = asyncio.ensure_future(client.submit("never sent"))
    for _ in range(30):
        await asyncio.sleep(0.01)
    assert not submit.done()
    await client.aclose()
    (outcome,) = await asyncio.gather(submit, return_exceptions=True)
    assert isinstance(outcome, BaseException)
    return outcome


async def test_a_given_session_with_the_trace_config_proves_nothing_was_sent() -> None:
    """With session= made with Client.trace_config(), a close during the handshake sends nothing."""
    async with silent_tls_server() as url:
        async with aiohttp.ClientSession(trace_configs=[nb.Client.trace_config()]) as session:
            client = nb.Client("nb-test", base_url=url, session=session)
            outcome = await close_during_handshake(client)
            assert isinstance(outcome, nb.errors.ClientClosedError)
            assert client.credits.charged == 0
            assert client.credits.reserved == 0
            assert client.limiter.in_flight == 0  # type: ignore[attr-defined]


async def test_the_trace_config_leaves_a_sessions_own_trace_contexts_alone() -> None:
    """A session carrying Client.trace_config() still serves the caller's own traced requests."""
    async with Emulator(speed=SPEED) as emu:
        async with aiohttp.ClientSession(trace_configs=[nb.Client.trace_config()]) as session:
            async with session.get(emu.base_url, trace_request_ctx={"mine": 1}) as response:
                assert response.status == 404


async def test_a_given_session_without_the_trace_config_counts_a_create_sent_as_it_starts() -> None:
    """Without the trace config (the documented limit), a create counts as sent once started."""
    async with silent_tls_server() as url:
        async with aiohttp.ClientSession() as session:
            client = nb.Client("nb-test", base_url=url, session=session)
            outcome = await close_during_handshake(client)
            assert isinstance(outcome, nb.SubmitUncertainError)
            assert client.credits.charged == 15


async def test_close_during_the_tls_handshake_proves_nothing_was_sent() -> None:
    """aclose() while the create's TLS handshake is unanswered is ClientClosedError, charging 0."""
    async with silent_tls_server() as url:
        client = nb.Client("nb-test", base_url=url)
        outcome = await close_during_handshake(client)
        assert isinstance(outcome, nb.errors.ClientClosedError)
        assert client.credits.charged == 0
        assert client.credits.reserved == 0
        assert client.limiter.in_flight == 0  # type: ignore[attr-defined]


async def test_an_uncertain_create_keeps_its_slot() -> None:
    """After SubmitUncertainError the slot stays taken, so the server never runs past the cap."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        # speed 1: the slot is held for nano-banana's typical longest run (20 s).
        async with client_for(emu, speed=1.0, max_concurrency=1) as client:
            with pytest.raises(nb.SubmitUncertainError):
                await client.submit("lost answer")
            assert emu.ledger.tasks_created == 1
            second = asyncio.ensure_future(client.submit("must wait"))
            for _ in range(20):
                await asyncio.sleep(0.005)
            # The first generation may be running on the server: the second waits for its slot.
            assert not second.done()
            assert emu.ledger.creates_received == 1
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
        # Closed within the hold: the limiter keeps the slot until the hold ends.
        assert client.limiter.in_flight == 1  # type: ignore[attr-defined]


async def test_a_held_slot_stays_held_in_a_shared_limiter_after_its_client_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client closed during an uncertain create's hold leaves the slot taken until the hold
    ends, so another client of the same Limiter cannot run a second generation meanwhile; both
    the hand-over and the other client's long wait say why at INFO."""
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    limiter = nb.Limiter(max_concurrency=1)
    # Polls at speed 2.5: nano-banana's hold is 20 / 2.5 = 8 s (a wide window under load); the
    # emulator at speed 5 runs the lost generation for 10 / 5 = 2 s.
    async with Emulator(speed=5.0, duration=10.0, credits=None) as emu:
        emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        first = client_for(emu, speed=2.5, limiter=limiter)
        with pytest.raises(nb.SubmitUncertainError):
            await first.submit("lost answer", model="nano-banana")
        await first.aclose()
        assert limiter.in_flight == 1  # the limiter holds the slot for the rest of the hold
        assert "its limiter keeps that slot" in caplog.text
        async with client_for(emu, speed=5.0, limiter=limiter) as second:
            submit = asyncio.ensure_future(second.submit("must wait", model="nano-banana"))
            await wait_for(lambda: limiter._slots.statistics().tasks_waiting == 1)
            assert emu.ledger.creates_received == 1
            with anyio.fail_after(60):
                task = await submit  # the hold ends: the slot comes back to the limiter
            assert limiter.in_flight == 1
            await task.wait(timeout=30)
        assert emu.ledger.max_running == 1
        assert limiter.in_flight == 0
    assert "1 of them kept for creates whose answer was lost" in caplog.text


async def test_the_hold_of_an_uncertain_slot_follows_the_model() -> None:
    """The hold is the model's typical longest run, capped by the deadline, scaled by speed."""
    from nanobanana_async._claim import uncertain_hold

    assert uncertain_hold("nano-banana-fast", "1K", speed=1.0, deadline=None) == 10.0
    assert uncertain_hold("nano-banana-pro", "4K", speed=1.0, deadline=None) == 90.0
    assert uncertain_hold("nano-banana-pro", "4K", speed=1.0, deadline=30.0) == 30.0
    assert uncertain_hold("nano-banana", "1K", speed=1000.0, deadline=None) == 0.02


async def test_a_failing_on_created_hook_keeps_the_task_id() -> None:
    """An on_created hook that raises gives the caller the paid task's id; the task is tracked."""

    async def disk_full(task: nb.Task) -> None:
        raise OSError(28, "No space left on device")

    async with held_emulator() as (emu, hold):
        async with client_for(emu) as client:
            hooks = nb.events.SubmitHooks(on_created=disk_full)
            with pytest.raises(nb.errors.SubmitHookError) as info:
                await client.submit("paid", hooks=hooks)
            error = info.value
            assert error.task_id is not None
            assert error.task_id in str(error)
            assert isinstance(error.__cause__, OSError)
            assert client.in_flight == 1  # still tracked
            hold.release()
            result = await error.task.wait()
            assert result.task_id == error.task_id
        assert emu.ledger.creates_received == 1


async def test_cancelling_generate_after_the_create_gives_the_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """generate() cancelled after its create answered names the task id, which stays tracked."""
    async with held_emulator() as (emu, _hold):
        async with client_for(emu) as client:
            job = asyncio.ensure_future(client.generate("paid"))
            await wait_for(lambda: client.in_flight == 1)
            for _ in range(5):
                await asyncio.sleep(0)  # let submit() return: generate() now waits on the task
            job.cancel()
            with caplog.at_level(logging.WARNING, logger="nanobanana_async"):
                with pytest.raises(asyncio.CancelledError) as info:
                    await job
            assert client.in_flight == 1
            (message,) = [
                r.getMessage() for r in caplog.records if "was cancelled" in r.getMessage()
            ]
            assert "nanobanana wait" in message
            assert any("nanobanana wait" in str(arg) for arg in info.value.args)


async def test_a_refused_create_after_the_caller_left_gives_its_claim_back() -> None:
    """A submit cancelled while its create is on the wire, then answered 400, frees its claim."""
    limiter = nb.Limiter(max_concurrency=1, max_credits=100)
    async with gated_emulator() as (emu, gate, _hold):
        emu.faults.inject(Fault.status(400), endpoint="create", times=1)
        async with client_for(emu, limiter=limiter) as client:
            submit = asyncio.ensure_future(client.submit("refused"))
            await wait_for(lambda: gate.waiting == 1)
            submit.cancel()
            await asyncio.gather(submit, return_exceptions=True)
            gate.open()
            await wait_for(lambda: limiter.in_flight == 0 and limiter.committed_credits == 0)
            assert client.credits.reserved == 0


def _create_attempts() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name() == "nanobanana-create" and not task.done()
    ]


@pytest.mark.parametrize("how", ["cancelled scope", "pending Task.cancel()"])
async def test_a_submit_cancelled_before_it_runs_starts_no_attempt(how: str) -> None:
    """A submit whose caller is already being cancelled starts no create attempt and gives its
    claim back, even on a kept-alive connection where nothing else would yield."""
    async with held_emulator(credits=None) as (emu, _hold):
        async with client_for(emu) as client:
            await client.submit("warm-up")  # leaves a kept-alive create connection; held running
            before = emu.ledger.creates_received
            if how == "cancelled scope":
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await client.submit("pre-cancelled")
                assert scope.cancelled_caught
            else:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await client.submit("pre-cancelled")
                if hasattr(task, "uncancel"):  # Python 3.11+
                    task.uncancel()
            # Checked before any other await: no attempt exists that could still write.
            assert _create_attempts() == []
            assert client.credits.reserved == 0
            assert slots(client) == 1  # the warm-up's task only
        assert emu.ledger.creates_received == before
