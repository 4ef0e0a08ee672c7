"""One poll scheduler per client: a heap of due times, and the adaptive poll timing."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ._config import PollPolicy

if TYPE_CHECKING:
    from ._task import TaskState

#: Typical durations in API seconds by model and size (docs/api.md §3), used until some are seen.
_TYPICAL: dict[tuple[str, str], tuple[float, float]] = {
    ("nano-banana-fast", "1K"): (4.0, 10.0),
    ("nano-banana", "1K"): (8.0, 20.0),
    ("nano-banana-pro", "1K"): (15.0, 20.0),
    ("nano-banana-pro", "2K"): (30.0, 40.0),
    ("nano-banana-pro", "4K"): (50.0, 70.0),
}
_UNKNOWN = (4.0, 20.0)
#: While progress says nothing, poll after this fraction of the time already waited.
_BACKOFF_FRACTION = 0.06
#: Progress counts as moving linearly when two rate estimates agree this closely.
_LINEAR_TOLERANCE = 0.15
#: Until progress is seen to move linearly, poll again after this fraction of the time waited.
_UNSURE_FRACTION = 0.25
#: First polls land this early relative to the fastest duration expected.
_EARLY = 0.9


def typical_duration(model: str | None, image_size: str | None) -> tuple[float, float]:
    """Return the (low, high) typical duration in API seconds for a model and image size."""
    if model is None:
        return _UNKNOWN
    found = _TYPICAL.get((model, image_size or "1K"))
    if found is None:
        found = _TYPICAL.get((model, "1K"), _UNKNOWN)
        if image_size == "2K":
            found = (found[0] * 1.25, found[1] * 1.25)
        elif image_size == "4K":
            found = (found[0] * 1.5, found[1] * 1.5)
    return found


class DurationStats:
    """Durations (real seconds) this client observed, per model and image size."""

    def __init__(self, keep: int = 32) -> None:
        self._keep = keep
        self._seen: dict[tuple[str | None, str | None], deque[float]] = {}

    def add(self, model: str | None, image_size: str | None, seconds: float) -> None:
        """Record a task that took *seconds* from submit to its first terminal poll."""
        key = (model, image_size)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = deque(maxlen=self._keep)
        seen.append(seconds)

    def low(self, model: str | None, image_size: str | None) -> float | None:
        """Return the shortest recent duration, once at least three were seen, else None."""
        seen = self._seen.get((model, image_size))
        if seen is None or len(seen) < 3:
            return None
        return min(seen)


class PollTimer:
    """Decides when to poll next, from progress, observed durations and `PollPolicy`."""

    def __init__(self, policy: PollPolicy, stats: DurationStats, rng: random.Random) -> None:
        self.policy = policy
        self.stats = stats
        self._rng = rng
        self._lo = policy.min_interval / policy.speed
        self._hi = policy.max_interval / policy.speed

    def _expected_low(self, state: TaskState) -> float:
        observed = self.stats.low(state.model, state.image_size)
        if observed is not None:
            return observed
        return typical_duration(state.model, state.image_size)[0] / self.policy.speed

    def first_delay(self, state: TaskState) -> float:
        """Seconds from submit to the first poll."""
        if self.policy.initial_delay is not None:
            return self.policy.initial_delay / self.policy.speed
        if state.model is None:  # attached by id: we know nothing, look now
            return 0.0
        return max(self._lo, _EARLY * self._expected_low(state))

    def next_delay(self, state: TaskState, now: float, moved: bool = True) -> float:
        """Seconds from *now* (just after a poll of a running task) to the next poll.

        *moved* says whether progress changed at this poll.
        """
        lo, hi = self._lo, self._hi
        elapsed = now - state.submitted_at
        progress = state.snapshot.progress
        if 0 < progress < 100 and moved:
            # The upper estimate of the finishing time: progress p means p <= true < p + 1, and
            # polling at the latest finish the rate allows is never early by more than a step.
            origin_rate = progress / max(elapsed, 1e-9)
            t0, p0 = state.first_progress
            delay = (100 - progress) / origin_rate
            if now > t0 and progress > p0:
                rate = (progress - p0) / (now - t0)
                linear = abs(rate - origin_rate) <= _LINEAR_TOLERANCE * origin_rate
                delay = (100 - progress) / rate
            else:
                linear = False
            if not linear:
                # One point, or progress that jumps: the rate is a guess, so look again soon.
                delay = min(delay, _UNSURE_FRACTION * elapsed)
            delay = min(hi, max(lo, delay))
            return delay * (1.0 + self._rng.uniform(0.0, self.policy.jitter / 4))
        expected = self._expected_low(state) * _EARLY - elapsed
        if progress == 0 and expected > lo:
            delay = min(hi, expected)
        else:
            delay = min(hi, max(lo, _BACKOFF_FRACTION * elapsed))
        return delay * (1.0 + self._rng.uniform(-self.policy.jitter, self.policy.jitter))


class PollScheduler:
    """Polls every tracked task when it comes due, a bounded number at once, in due order.

    One heap of `(due, seq, state, generation)`; a stale entry (the task was rescheduled or ended)
    is skipped when it surfaces. A single timer wakes the runner for the earliest due time. The
    owner runs `run()` in its task group; the polls run in a task group of the runner's own, so
    cancelling the runner ends every poll in flight too.
    """

    def __init__(
        self,
        poll: Callable[[TaskState], Awaitable[None]],
        concurrency: int,
        on_crash: Callable[[TaskState, BaseException], None],
    ) -> None:
        self._poll = poll
        self._on_crash = on_crash
        self._heap: list[tuple[float, int, TaskState, int]] = []
        self._seq = itertools.count()
        self._slots = asyncio.Semaphore(concurrency)
        self._wakeup = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._running = False

    def schedule(self, state: TaskState, due: float) -> None:
        """Poll *state* at loop time *due* (replacing any earlier plan for it)."""
        state.poll_generation += 1
        heapq.heappush(self._heap, (due, next(self._seq), state, state.poll_generation))
        if self._running and due < self._timer_due:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().call_at(due, self._wakeup.set)

    async def run(self) -> None:
        """Poll tasks as they come due, until cancelled."""
        self._running = True
        try:
            async with anyio.create_task_group() as polls:
                await self._dispatch(polls)
        finally:
            self._running = False
            if self._timer is not None:
                self._timer.cancel()
            self._heap.clear()

    async def _dispatch(self, polls: TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            if not heap:
                self._timer_due = float("inf")
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            due, _, state, generation = heap[0]
            if generation != state.poll_generation or state.done:
                heapq.heappop(heap)
                continue
            if due > loop.time():
                self._arm(due)
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            # While we waited for a slot, only earlier entries can have come in (this loop alone
            # pops): the head is still due, but it may have gone stale.
            due, _, state, generation = heapq.heappop(heap)
            if generation != state.poll_generation or state.done:
                self._slots.release()
                continue
            polls.start_soon(self._one, state)

    async def _one(self, state: TaskState) -> None:
        try:
            await self._poll(state)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            self._on_crash(state, exc)
        finally:
            self._slots.release()
