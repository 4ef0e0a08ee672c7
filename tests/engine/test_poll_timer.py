"""PollTimer as a pure function: poll times from durations seen, progress read and our own clock.

Each test polls made-up tasks the way the client does (`first_delay`, then `next_delay` after
each running answer, `finished` at the first terminal one) on a clock the test advances itself,
so nothing here depends on the machine's speed or load.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Callable, Iterator

import attrs
import pytest

import nanobanana_async as nb
from nanobanana_async._poller import DurationStats, PollTimer
from nanobanana_async._task import TaskState

Progress = Callable[[float], int]
POLICY = nb.PollPolicy()
LO, HI, JITTER = POLICY.min_interval, POLICY.max_interval, POLICY.jitter


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop for the TaskState objects (never run: the clock here is the test's)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@attrs.frozen
class Run:
    """The polls of one task, in seconds from its submit."""

    polls: list[float]
    end: float

    @property
    def latency(self) -> float:
        """From the task's end to the poll that saw it."""
        return self.polls[-1] - self.end

    @property
    def gaps(self) -> list[float]:
        """The waits between polls."""
        return [b - a for a, b in zip(self.polls, self.polls[1:], strict=False)]


def linear(duration: float) -> Progress:
    """Progress rounded down from the share of *duration* elapsed, as the emulator reports it."""
    return lambda t: min(99, int(100 * t / duration))


def stuck(t: float) -> int:
    """Progress that sits at 0 until the task is done (or jumps straight to 100)."""
    return 0


def drive(
    timer: PollTimer,
    loop: asyncio.AbstractEventLoop,
    end: float,
    progress: Progress,
    *,
    model: str | None = "nano-banana",
    size: str | None = "1K",
) -> Run:
    """Poll one task ending at *end* (seconds from submit) as the client does; return its polls."""
    state = TaskState(
        nb.TaskSnapshot(id="3-test", status=nb.TaskStatus.RUNNING),
        loop=loop,
        model=model,
        image_size=size,
        submitted_at=0.0,
        deadline=None,
        lease=None,
    )
    now = timer.first_delay(state)
    polls: list[float] = []
    while len(polls) < 1000:
        polls.append(now)
        if now >= end:
            timer.finished(state, now)
            return Run(polls, end)
        value = progress(now)
        moved = value != state.snapshot.progress
        if moved:
            if state.snapshot.progress == 0:
                state.first_progress = (now, value)
            state.publish(
                nb.TaskSnapshot(id="3-test", status=nb.TaskStatus.RUNNING, progress=value)
            )
        now += timer.next_delay(state, now, moved)
    raise AssertionError("the task was never seen done")


def new_timer(seed: int = 1, policy: nb.PollPolicy = POLICY) -> PollTimer:
    """A timer with nothing observed yet."""
    return PollTimer(policy, DurationStats(), random.Random(seed))


def test_linear_tasks_take_two_polls_and_are_seen_promptly(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Tasks of 8-20 s with linear progress take at most 2 polls, seen well within 0.5 s polling."""
    timer = new_timer()
    durations = random.Random(7).choices(range(800, 2001), k=200)
    runs = [drive(timer, loop, d / 100, linear(d / 100)) for d in durations]
    polls = [len(run.polls) for run in runs]
    assert statistics.mean(polls) <= 2.0
    # A third only where the first reading predicted an end beyond every duration seen so far.
    assert max(polls) <= 3
    assert polls.count(3) <= len(polls) / 20
    latencies = sorted(run.latency for run in runs)
    # Fixed 0.5 s polling sees a task 0.25 s late at the median and 0.475 s at the 95th percentile.
    assert statistics.median(latencies) <= 0.7 * 0.25
    assert latencies[int(0.95 * len(latencies))] <= 0.475
    # The second poll is aimed at the latest end the first reading allows (plus a tenth of that
    # reading's window as jitter), or min_interval after the first when that comes later.
    for run in runs:
        if len(run.polls) == 2:
            first, second = run.polls
            value = int(100 * first / run.end)
            earliest, latest = 100 * first / (value + 1), 100 * first / value
            assert second >= earliest
            assert second <= max(first + LO, latest + (latest - earliest) * JITTER)


def test_the_first_poll_follows_the_durations_observed(loop: asyncio.AbstractEventLoop) -> None:
    """The first poll lands just before the fastest durations observed, not the typical table's."""
    timer = new_timer()
    table = [drive(timer, loop, 100.0, stuck).polls[0]]  # the nano-banana table: 8-20 s
    assert 0.9 * 8.0 * (1 - JITTER / 2) <= table[0] <= 8.0
    for end in (31.0, 30.0, 35.0, 38.0, 33.0):
        drive(timer, loop, end, linear(end))
    firsts = [drive(timer, loop, 100.0, stuck).polls[0] for _ in range(20)]
    # Recorded durations are the polls that saw the tasks done, a little after 30, 31, ... s.
    assert all(0.9 * 30.0 <= first < 31.0 for first in firsts)
    # Jitter spreads the first polls (earlier only, so no more tasks are missed).
    assert len(set(firsts)) > 1


def test_one_reading_is_trusted_only_after_linear_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """After tasks whose progress was not linear, one reading no longer decides the next poll."""
    timer = new_timer()
    trusting = drive(timer, loop, 19.0, linear(19.0))
    assert len(trusting.polls) == 2  # nothing seen yet says otherwise: aimed at the end
    drive(timer, loop, 15.0, stuck)  # sat at 0 for most of its run: not linear
    doubting = drive(timer, loop, 19.0, linear(19.0))
    # One reading now only says when to look again: soon, a quarter of the time waited.
    first, second = doubting.polls[:2]
    assert second - first <= max(LO, 0.25 * first) * (1 + JITTER / 4)
    assert len(doubting.polls) == 3
    for _ in range(7):
        drive(timer, loop, 14.0, linear(14.0))
    # Eight linear tasks in the last nine: one reading is trusted again.
    assert len(drive(timer, loop, 19.0, linear(19.0)).polls) == 2


def test_an_end_beyond_every_duration_seen_is_confirmed_first(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A long-tail task (linear, 200 s) is read again before its far end is awaited; not starved."""
    timer = new_timer()
    for end in (9.0, 12.0, 15.0, 18.0, 20.0):
        drive(timer, loop, end, linear(end))
    run = drive(timer, loop, 200.0, linear(200.0))
    first, second = run.polls[:2]
    assert second - first <= max(LO, 0.25 * first) * (1 + JITTER / 4)
    assert all(LO <= gap <= HI * (1 + JITTER) for gap in run.gaps)
    # Late by at most one step of progress (2 s of a 200 s task), with jitter.
    assert run.latency <= 200 / 100 * (1 + JITTER)
    assert len(run.polls) <= 200 / HI + 6


def test_a_task_past_its_predicted_end_is_polled_again_soon(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """When the predicted end passes with the task still running, the next polls come quickly."""
    timer = new_timer()
    for end in (10.0, 14.0, 18.0):
        drive(timer, loop, end, linear(end))
    # Progress linear over 14 s, but the task ends a moment later (a rounding, a clock skew)...
    late = drive(timer, loop, 14.2, linear(14.0))
    assert late.polls[1] < 14.2
    assert late.gaps[1] == pytest.approx(LO)
    assert late.latency <= LO
    # ... or lingers at 99 for seconds: polls keep coming at short intervals, paced by the time
    # waited (not by a new guess at a far end).
    lingering = drive(timer, loop, 20.0, linear(14.0))
    assert all(
        gap <= max(LO, 0.06 * at) * (1 + JITTER)
        for gap, at in zip(lingering.gaps[1:], lingering.polls[1:], strict=False)
    )
    assert lingering.latency <= max(LO, 0.06 * 20.0) * (1 + JITTER)


@pytest.mark.parametrize("end", [9.0, 15.0, 40.0, 250.0])
def test_progress_that_sits_at_zero_is_not_starved(
    loop: asyncio.AbstractEventLoop, end: float
) -> None:
    """Progress at 0 until the end (or straight to 100): polls stay within bounds, end seen soon."""
    timer = new_timer()
    for seen in (10.0, 14.0, 18.0):
        drive(timer, loop, seen, stuck)
    run = drive(timer, loop, end, stuck)
    assert all(LO * (1 - JITTER) <= gap <= HI * (1 + JITTER) for gap in run.gaps)
    # Late by at most a step of the back-off (6 % of the time waited, within the bounds) or, if
    # the task ended before the first poll, by less than the fastest duration observed.
    assert run.latency <= max(LO, min(HI, 0.06 * run.polls[-1])) * (1 + JITTER) or (
        len(run.polls) == 1 and run.polls[0] < 10.0
    )


@pytest.mark.parametrize("seed", range(6))
def test_every_wait_stays_within_the_policy_bounds(
    loop: asyncio.AbstractEventLoop, seed: int
) -> None:
    """Whatever the progress does, every wait is within PollPolicy bounds (with jitter)."""
    rng = random.Random(seed)
    policy = nb.PollPolicy(min_interval=1.0, max_interval=4.0, jitter=0.2)
    timer = new_timer(seed, policy)

    def jumpy(end: float) -> Progress:
        steps = sorted(
            zip(
                sorted(rng.uniform(0, end) for _ in range(3)),
                sorted(rng.sample(range(1, 100), 3)),
                strict=True,
            )
        )
        return lambda t: max([value for at, value in steps if at <= t], default=0)

    def rounded(end: float) -> Progress:
        return lambda t: min(99, round(100 * t / end))

    shapes: list[Callable[[float], Progress]] = [linear, jumpy, rounded, lambda end: stuck]
    for _ in range(60):
        end = rng.choice([rng.uniform(4, 25), rng.uniform(150, 300)])
        run = drive(timer, loop, end, rng.choice(shapes)(end))
        assert run.polls[0] >= policy.min_interval * (1 - policy.jitter / 2)
        assert all(1.0 * (1 - 0.2) <= gap <= 4.0 * (1 + 0.2) for gap in run.gaps)
        assert run.latency <= 4.0 * (1 + 0.2) or len(run.polls) == 1


def test_a_task_attached_by_id_is_polled_at_once_then_paced(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A task attached by id (no model, no submit time) is polled now, then by its progress rate."""
    timer = new_timer()
    run = drive(timer, loop, 12.0, linear(12.0), model=None, size=None)
    assert run.polls[0] == 0.0
    assert all(LO * (1 - JITTER) <= gap <= HI * (1 + JITTER) for gap in run.gaps)
    assert run.latency <= HI
