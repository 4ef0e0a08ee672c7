"""One poll scheduler per client: a heap of due times, and the adaptive poll timing."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
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
#: First polls land this early relative to the fastest duration expected (typical table).
_EARLY = 0.9
#: Durations observed: the first poll aims at this quantile of them, times _EARLY_OBSERVED.
_FIRST_QUANTILE = 0.04
_EARLY_OBSERVED = 0.97
#: Bounds from polls of one task agree with linear progress when within this fraction (clocks
#: of client and server differ by a network leg, and progress may be rounded).
_AGREE = 0.02
#: An end known only within more than this many min_intervals is first narrowed by one more poll.
_REFINE = 2.0
#: Finished tasks remembered per model and size to judge whether their progress is linear.
_VERDICTS = 8


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
    """What this client observed per model and image size: durations, and linear progress.

    Durations are real seconds from submit to the first poll that saw the task succeed. A verdict
    says whether a finished task's progress was linear from its submit (see `PollTimer.finished`).
    """

    def __init__(self, keep: int = 32) -> None:
        self._keep = keep
        self._seen: dict[tuple[str | None, str | None], deque[float]] = {}
        self._verdicts: dict[tuple[str | None, str | None], deque[bool]] = {}

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

    def longest(self, model: str | None, image_size: str | None) -> float | None:
        """Return the longest duration to expect, once three were seen, else None.

        The longest seen, plus the range seen over the count: few samples leave more room above.
        """
        seen = self._seen.get((model, image_size))
        if seen is None or len(seen) < 3:
            return None
        high = max(seen)
        return high + (high - min(seen)) / len(seen)

    def quantile(self, model: str | None, image_size: str | None, q: float) -> float | None:
        """Return the *q* quantile (0-1) of recent durations, once three were seen, else None."""
        seen = self._seen.get((model, image_size))
        if seen is None or len(seen) < 3:
            return None
        ordered = sorted(seen)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def note_linear(self, model: str | None, image_size: str | None, linear: bool) -> None:
        """Record whether a finished task's progress was linear from its submit."""
        key = (model, image_size)
        verdicts = self._verdicts.get(key)
        if verdicts is None:
            verdicts = self._verdicts[key] = deque(maxlen=_VERDICTS)
        verdicts.append(linear)

    def trusts_linear(self, model: str | None, image_size: str | None) -> bool:
        """Whether progress of this model and size is linear enough to aim at its predicted end.

        Linear until a task shows otherwise (a wrong guess costs that task one poll); then again
        once at most one of the last eight finished tasks was not.
        """
        verdicts = self._verdicts.get((model, image_size))
        if verdicts is None:
            return True
        return verdicts.count(False) <= len(verdicts) // _VERDICTS


class PollTimer:
    """Decides when to poll next, from progress, observed durations and `PollPolicy`.

    A task submitted by this client usually takes two polls: the first aimed (from the durations
    observed for its model and size) shortly before the fastest of them ends, the second at the
    end its progress then predicts, when earlier tasks of that model and size showed progress
    linear from submit. Progress that sits at 0, jumps, or misses its predicted end falls back to
    short polls paced by the time already waited. Every delay stays within `PollPolicy` bounds.
    """

    def __init__(self, policy: PollPolicy, stats: DurationStats, rng: random.Random) -> None:
        self.policy = policy
        self.stats = stats
        self._rng = rng
        self._lo = policy.min_interval / policy.speed
        self._hi = policy.max_interval / policy.speed

    def _first_aim(self, state: TaskState) -> float:
        """Seconds from submit at which to look first: before all but the fastest tasks end."""
        observed = self.stats.quantile(state.model, state.image_size, _FIRST_QUANTILE)
        if observed is not None:
            return _EARLY_OBSERVED * observed
        return _EARLY * typical_duration(state.model, state.image_size)[0] / self.policy.speed

    def first_delay(self, state: TaskState) -> float:
        """Seconds from submit to the first poll."""
        if self.policy.initial_delay is not None:
            return self.policy.initial_delay / self.policy.speed
        if state.model is None:  # attached by id: we know nothing, look now
            return 0.0
        delay = max(self._lo, self._first_aim(state))
        # Earlier only: a first poll later than aimed would find more tasks already done.
        return delay * (1.0 - self._rng.uniform(0.0, self.policy.jitter / 2))

    def next_delay(self, state: TaskState, now: float, moved: bool = True) -> float:
        """Seconds from *now* (just after a poll of a running task) to the next poll.

        *moved* says whether progress changed at this poll.
        """
        lo, hi = self._lo, self._hi
        elapsed = now - state.submitted_at
        progress = state.snapshot.progress
        if state.model is not None:  # submitted here: progress counts from submitted_at
            _narrow(state, elapsed, progress)
            if 0 < progress < 100 and state.linear_lo <= state.linear_hi * (1 + _AGREE):
                # One reading suffices where earlier tasks were linear; else two must agree. An
                # end beyond every duration expected is more likely progress that lags than a
                # fact: unless both hold, it is read again first (a rare long task, too).
                trusted = self.stats.trusts_linear(state.model, state.image_size)
                twice = _moved_twice(state, now)
                if (trusted and twice) or (
                    (trusted or twice) and state.linear_lo <= self._longest(state)
                ):
                    return self._aim_at_end(state, elapsed)
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
            spread = self._rng.uniform(0.0, self.policy.jitter / 4)
        else:
            expected = self._first_aim(state) - elapsed if state.model is not None else 0.0
            # Before the first aim (a task attached early), wait for it; after, back off.
            delay = expected if progress == 0 and expected > lo else _BACKOFF_FRACTION * elapsed
            spread = self._rng.uniform(-self.policy.jitter, self.policy.jitter)
        if state.model is not None:
            # Progress that lags says little: do not wait past the longest duration expected.
            longest = self._longest(state) - elapsed
            if longest > 0:
                delay = min(delay, longest)
        return min(hi, max(lo, delay)) * (1.0 + spread)

    def _longest(self, state: TaskState) -> float:
        """The longest duration expected for the model and size (seconds from submit)."""
        observed = self.stats.longest(state.model, state.image_size)
        if observed is None:
            return typical_duration(state.model, state.image_size)[1] / self.policy.speed
        return observed

    def _aim_at_end(self, state: TaskState, elapsed: float) -> float:
        """Delay to the latest end that linear progress allows (or to narrow a wide window)."""
        lo, hi = self._lo, self._hi
        start = max(state.linear_lo, elapsed)
        end = max(state.linear_hi, start)
        width = end - start
        if width > _REFINE * lo and start - elapsed >= lo:
            # Known only roughly (little progress yet, or a long task): look at the earliest end
            # first, where progress near 100 pins the end down to a step of it.
            delay = start - elapsed
        else:
            # Never before the latest end: jitter spreads polls over a fraction of the window.
            delay = end - elapsed + width * self._rng.uniform(0.0, self.policy.jitter)
        return min(hi, max(lo, delay))

    def finished(self, state: TaskState, now: float) -> None:
        """Learn from a task seen succeeded at *now*: its duration, and whether it was linear."""
        if state.model is None:
            return
        elapsed = now - state.submitted_at
        self.stats.add(state.model, state.image_size, elapsed)
        hi = min(state.linear_hi, elapsed)
        if state.linear_lo > hi * (1 + _AGREE):
            self.stats.note_linear(state.model, state.image_size, False)
        elif state.linear_hi != math.inf:  # some progress was seen, and it was linear
            self.stats.note_linear(state.model, state.image_size, True)


def _narrow(state: TaskState, elapsed: float, progress: int) -> None:
    """Intersect the task's linear duration bounds with what a running poll just showed."""
    if not 0 <= progress < 100:
        return
    # Progress p at elapsed e, if linear from submit and rounded down: p <= 100 e / D < p + 1.
    lo = max(elapsed, 100.0 * elapsed / (progress + 1))
    if lo > state.linear_lo:
        state.linear_lo = lo
    if progress > 0:
        hi = 100.0 * elapsed / progress
        if hi < state.linear_hi:
            state.linear_hi = hi


def _moved_twice(state: TaskState, now: float) -> bool:
    """Whether this task itself has shown progress above 0 at two polls."""
    t0, p0 = state.first_progress
    return now > t0 and state.snapshot.progress > p0


class PollScheduler:
    """Polls every tracked task when it comes due, a bounded number at once, in due order.

    One heap of `(due, seq, state, generation)`; a stale entry (the task was rescheduled or ended)
    is skipped when it surfaces. A single timer wakes the runner for the earliest due time. The
    owner runs `run()` in its task group; the polls run in a task group of the runner's own, so
    cancelling the runner ends every poll in flight too. A poll is handed to an idle poll worker
    of that group when there is one; a worker is started only when none is idle, so there are
    never more workers than polls allowed at once, and a poll costs a wake-up, not a new task.
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
        #: Idle poll workers, each waiting on its future for the next task to poll.
        self._idle: list[asyncio.Future[TaskState]] = []

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
            self._idle.clear()

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
            while self._idle:
                handed = self._idle.pop()
                if not handed.done():  # a worker cancelled while idle leaves a dead future
                    handed.set_result(state)
                    break
            else:
                polls.start_soon(self._worker, state, loop)

    async def _worker(self, state: TaskState, loop: asyncio.AbstractEventLoop) -> None:
        """Poll *state*, then wait idle for the next task the dispatcher hands over."""
        while True:
            try:
                await self._poll(state)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:
                self._on_crash(state, exc)
            finally:
                self._slots.release()
            handed: asyncio.Future[TaskState] = loop.create_future()
            self._idle.append(handed)
            try:
                state = await handed
            except BaseException:
                if handed.done() and not handed.cancelled():
                    self._slots.release()  # handed a poll it will not run
                raise
