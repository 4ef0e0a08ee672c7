"""The emulator's hold and gate: the test decides when tasks end and when creates land."""

from __future__ import annotations

import aiohttp
import anyio
import pytest

from nanobanana_async.testing import Emulator

from ._helpers import create, poll

pytestmark = pytest.mark.anyio

BODY = {"prompt": "a banana cat", "model": "nano-banana"}


async def test_a_hold_hides_the_end_of_tasks_from_polls_until_released() -> None:
    """A held task polls as running (progress <= 99) after its end; released, it polls as done."""
    async with Emulator(speed=1000, duration=0.0) as emu, aiohttp.ClientSession() as session:
        hold = emu.hold()  # made after the start: no middleware, works at any time
        _, first = await create(session, emu, json_body=BODY)
        _, second = await create(session, emu, json_body=BODY)
        one, two = first["data"]["id"], second["data"]["id"]
        for task_id in (one, two):
            _, body = await poll(session, emu, task_id)
            assert body["data"]["status"] == "running"
            assert body["data"]["progress"] <= 99
            assert body["data"]["results"] == []
        assert hold.hidden == {one, two}
        assert emu.ledger.credits_charged == 30  # the ledger is the real one
        hold.release(one)
        assert not hold.holds(one)
        assert hold.holds(two)
        _, body = await poll(session, emu, one)
        assert body["data"]["status"] == "succeeded"
        with hold:  # leaving the block releases everything
            pass
        _, body = await poll(session, emu, two)
        assert body["data"]["status"] == "succeeded"


async def test_a_hold_of_named_tasks_leaves_the_others_alone() -> None:
    """emu.hold(predicate) holds only the tasks it accepts; the others report their real end."""
    async with Emulator(speed=1000, duration=0.0) as emu, aiohttp.ClientSession() as session:
        _, first = await create(session, emu, json_body=BODY)
        _, second = await create(session, emu, json_body={**BODY, "prompt": "a banana dog"})
        held_id, free_id = first["data"]["id"], second["data"]["id"]
        emu.hold(lambda task_id: task_id == held_id)
        _, held = await poll(session, emu, held_id)
        _, free = await poll(session, emu, free_id)
        assert held["data"]["status"] == "running"
        assert free["data"]["status"] == "succeeded"


async def test_a_gate_keeps_creates_at_the_door_uncharged_until_opened() -> None:
    """A create at a closed gate is neither processed nor charged; opening lets it through."""
    async with Emulator(speed=1000) as emu, aiohttp.ClientSession() as session:
        gate = emu.gate("create")
        answers: list[int] = []

        async def send() -> None:
            status, _ = await create(session, emu, json_body=BODY)
            answers.append(status)

        async with anyio.create_task_group() as group:
            group.start_soon(send)
            group.start_soon(send)
            await gate.wait_until_waiting(2)
            assert gate.waiting == 2
            assert emu.ledger.creates_received == 0
            assert emu.ledger.credits_charged == 0
            assert emu.requests == []
            status, _ = await poll(session, emu, "3-unknown")  # other endpoints pass
            assert status == 404
            gate.open()
        assert answers == [200, 200]
        assert gate.passed == 2
        assert emu.ledger.credits_charged == 30


async def test_waiting_for_arrivals_that_never_come_says_so() -> None:
    """Gate.wait_until_waiting raises TimeoutError naming the count when nobody arrives."""
    async with Emulator(speed=1000) as emu:
        gate = emu.gate("result")
        with pytest.raises(TimeoutError, match=r"0 request\(s\) waiting at the result gate"):
            await gate.wait_until_waiting(1, timeout=0.05)


async def test_closing_the_emulator_drops_requests_waiting_at_a_gate_at_once() -> None:
    """aclose() drops the requests waiting at a closed gate: they fail, unprocessed, unrecorded."""
    emu = Emulator(speed=1000)
    await emu.start()
    gate = emu.gate("any")
    async with aiohttp.ClientSession() as session:
        async with anyio.create_task_group() as group:

            async def send() -> None:
                with pytest.raises(aiohttp.ClientError):
                    await create(session, emu, json_body=BODY)

            group.start_soon(send)
            await gate.wait_until_waiting(1)
            await emu.aclose()
    assert gate.waiting == 0
    assert gate.passed == 0
    assert emu.requests == []
    assert emu.ledger.creates_received == 0
