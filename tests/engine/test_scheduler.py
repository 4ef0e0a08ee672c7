"""The poll scheduler's workers: a poll handed over is run or its slot given back."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from nanobanana_async._poller import PollScheduler

pytestmark = pytest.mark.anyio


class _State:
    """The part of a TaskState the scheduler reads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.poll_generation = 0
        self.done = False

    def __repr__(self) -> str:
        return self.name


async def test_a_cancel_landing_as_a_poll_ends_loses_no_poll_and_no_slot() -> None:
    """When the owner's cancel lands in the turn a poll ends, the next due poll still runs
    or its slot comes back: the scheduler never hands a poll to a worker cancelled while idle."""
    polled: list[str] = []
    crashes: list[BaseException] = []
    loop = asyncio.get_running_loop()

    async with anyio.create_task_group() as group:

        async def poll(state: _State) -> None:
            polled.append(state.name)
            if state.name == "A":
                # The end of A's poll and the owner's cancel fall in one loop cycle.
                loop.call_soon(group.cancel_scope.cancel)

        scheduler = PollScheduler(poll, 1, lambda _s, exc: crashes.append(exc))  # type: ignore[arg-type]
        now = loop.time()
        scheduler.schedule(_State("A"), now)  # type: ignore[arg-type]
        scheduler.schedule(_State("B"), now)  # type: ignore[arg-type]
        group.start_soon(scheduler.run)

    assert crashes == []
    assert polled == ["A", "B"]
    assert scheduler._slots._value == 1  # the one poll slot is free again
