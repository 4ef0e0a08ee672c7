"""A stateful fuzz of the engine: random submits, waits and cancellations on a flaky emulator.

Each example runs in its own event loop; the rules drive it a step at a time. Whatever happens,
the end state must be clean: every slot free, no asyncio task left, no ResourceWarning, and no
caller that nobody cancelled ever sees a bare CancelledError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio
import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import SPEED, assert_no_resource_warning, client_for, wait_for

T = TypeVar("T")
CAP = 2


@attrs.define(eq=False)
class Job:
    """A submit or a wait running in the background, and whether the machine cancelled it."""

    kind: str
    future: asyncio.Task[Any]
    cancelled_by_us: bool = False


class EngineMachine(RuleBasedStateMachine):
    """Random submits, waits and cancellations against one client and one emulator."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.jobs: list[Job] = []
        self.drain = True
        self.limiter = nb.Limiter(max_concurrency=CAP)
        self.emu = Emulator(speed=SPEED, credits=None, failure_rate=0.1)
        self.run(self.emu.start())
        self.client = client_for(
            self.emu,
            limiter=self.limiter,
            retry=nb.RetryPolicy(sleep=False, resend_on_503=True),
        )

    @initialize(drain=st.booleans())
    def choose_ending(self, drain: bool) -> None:
        """Choose how the example ends: drain every task first, or close with work in flight."""
        self.drain = drain

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* to its end in this example's loop (background work runs meanwhile)."""
        return self.loop.run_until_complete(coro)

    def spawn(self, kind: str, coro: Coroutine[Any, Any, Any]) -> None:
        """Start *coro* in the background and let it reach its first await."""
        self.jobs.append(Job(kind, self.loop.create_task(coro)))
        for _ in range(3):  # enough turns for a create to get on the wire
            self.run(asyncio.sleep(0))

    def of(self, kind: str) -> list[Job]:
        """Jobs of *kind*, latest first, running or not (rules must not depend on timing)."""
        return [job for job in reversed(self.jobs) if job.kind == kind]

    async def _submit(self) -> nb.Task | nb.NanoBananaError:
        try:
            return await self.client.submit("state machine", model="nano-banana-fast")
        except nb.NanoBananaError as exc:
            return exc

    async def _wait(self, submit: Job) -> nb.TaskResult | nb.NanoBananaError | None:
        # Wait for the submit without ever cancelling it, then for its task.
        await asyncio.wait([submit.future])
        if submit.future.cancelled() or not isinstance(submit.future.result(), nb.Task):
            return None
        task: nb.Task = submit.future.result()
        try:
            return await task.wait()
        except nb.NanoBananaError as exc:
            return exc

    @rule(
        create_fault=st.sampled_from(
            [
                None,
                Fault.delay(0.0),
                Fault.delay(0.005),
                Fault.delay(0.02),
                Fault.delay(0.05),
                Fault.status(503),
                Fault.rate_limit(retry_after=0.01),
            ]
        ),
        poll_delay=st.sampled_from([None, None, 0.005, 0.03]),
    )
    def submit(self, create_fault: Fault | None, poll_delay: float | None) -> None:
        """Submit a generation, its create slowed or refused once (then retried) on the emulator."""
        if create_fault is not None:
            self.emu.faults.inject(create_fault, endpoint="create", times=1)
        if poll_delay is not None:
            self.emu.faults.inject(Fault.delay(poll_delay), endpoint="result", times=1)
        self.spawn("submit", self._submit())

    @precondition(lambda self: bool(self.of("submit")))
    @rule(data=st.data())
    def wait(self, data: st.DataObject) -> None:
        """Start a wait() on the task of one of the submits (once it has one)."""
        self.spawn("wait", self._wait(data.draw(st.sampled_from(self.of("submit")))))

    @precondition(lambda self: bool(self.of("submit")))
    @rule(data=st.data())
    def cancel_submit(self, data: st.DataObject) -> None:
        """Cancel a submit, if still in progress (queued, on the wire or backing off)."""
        self._cancel(data.draw(st.sampled_from(self.of("submit"))))

    @precondition(lambda self: bool(self.of("wait")))
    @rule(data=st.data())
    def cancel_wait(self, data: st.DataObject) -> None:
        """Cancel a wait(), if still in progress."""
        self._cancel(data.draw(st.sampled_from(self.of("wait"))))

    def _cancel(self, job: Job) -> None:
        job.cancelled_by_us |= job.future.cancel()
        self.run(asyncio.sleep(0))

    @rule(ms=st.integers(min_value=0, max_value=30))
    def advance(self, ms: int) -> None:
        """Let the loop run for a few milliseconds."""
        self.run(asyncio.sleep(ms / 1000))

    @invariant()
    def slots_are_bounded(self) -> None:
        """The limiter never holds more than its cap, and every tracked task holds a slot."""
        assert self.limiter.in_flight <= CAP
        assert self.client.in_flight <= self.limiter.in_flight
        assert self.client.credits.reserved >= 0

    async def _finish(self) -> None:
        if self.drain:
            with anyio.fail_after(10):
                for job in self.of("submit"):
                    await asyncio.wait([job.future])
            # A cancelled submit's create may still be on the wire; it holds its slot until
            # its task (tracked once the answer comes) ends.
            await wait_for(
                lambda: self.client.in_flight == 0 and self.limiter.in_flight == 0, timeout=10
            )
        await self.client.aclose()
        with anyio.fail_after(10):
            await asyncio.gather(*(job.future for job in self.jobs), return_exceptions=True)
        # A create made uncertain by the close keeps its slot in the limiter until its hold ends
        # (the model's longest run over the emulator's speed), then it comes back.
        await wait_for(lambda: self.limiter.in_flight == 0, timeout=10)
        assert self.client.credits.reserved == 0
        for job in self.jobs:
            if not job.cancelled_by_us:
                assert not job.future.cancelled(), f"a {job.kind} nobody cancelled was cancelled"
        await self.emu.aclose()
        me = asyncio.current_task()

        def left() -> list[asyncio.Task[Any]]:
            return [task for task in asyncio.all_tasks() if task is not me and not task.done()]

        try:
            await wait_for(lambda: not left(), timeout=2)
        except AssertionError:
            raise AssertionError(f"tasks left behind: {left()!r}") from None

    def teardown(self) -> None:
        """Close everything; the loop must be left with no task, the process with no leak."""
        try:
            self.run(self._finish())
        finally:
            self.run(self.client.aclose())
            self.run(self.emu.aclose())
            self.run(self.loop.shutdown_asyncgens())
            self.loop.close()
        assert_no_resource_warning()


class TestEngineStateMachine(EngineMachine.TestCase):  # type: ignore[misc,valid-type]
    """Any interleaving of submits, waits and cancellations ends with every slot free."""

    settings = settings(
        max_examples=25,
        stateful_step_count=20,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
