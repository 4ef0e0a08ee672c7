"""Polling: safe failures retried, client errors final, Retry-After is law, timing adapts."""

from __future__ import annotations

import statistics
from typing import Literal

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import (
    NO_SLEEP,
    SPEED,
    PauseLog,
    client_for,
    records,
    slots,
    traced_session,
    wait_for,
)

pytestmark = pytest.mark.anyio

#: Rounding slack for times compared on one clock (seconds); no allowance for load is needed.
SLACK = 0.001
UNKNOWN_ID = "3-00000000-0000-4000-8000-000000000000"


async def test_polls_survive_a_run_of_failures() -> None:
    """Five failed polls in a row (5xx, drops before and after, 429) are retried to success."""
    async with Emulator(speed=SPEED) as emu:
        for fault in (
            Fault.status(500),
            Fault.drop_before(),
            Fault.drop_after(),
            Fault.status(503),
            Fault.rate_limit(retry_after=0.05),
        ):
            emu.faults.inject(fault, endpoint="result", times=1)
        events: list[nb.events.RetryEvent] = []
        async with client_for(emu) as client:
            client.add_retry_listener(events.append)
            task = await client.submit("stubborn")
            result = await task.wait()
            assert slots(client) == 0
        assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
        assert emu.faults.fired_total == 5
        assert [e.attempt for e in events] == [1, 2, 3, 4, 5]
        assert {e.endpoint for e in events} == {"result"}
        assert {e.task_id for e in events} == {task.id}
        assert [type(e.cause) for e in events] == [
            nb.ServerError,
            nb.TransportError,
            nb.TransportError,
            nb.ServerError,
            nb.RateLimitError,
        ]
        assert emu.ledger.creates_received == 1


@pytest.mark.parametrize(
    "fault",
    [Fault.status(502), Fault.drop_before(), Fault.html(504)],
    ids=["502", "drop_before", "html-504"],
)
async def test_poll_retries_run_out(fault: Fault) -> None:
    """When every poll fails, the task ends with the last error after `attempts` polls."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(fault, endpoint="result")
        retry = nb.RetryPolicy(attempts=3, sleep=False)
        async with client_for(emu, retry=retry) as client:
            task = await client.submit("never seen")
            with pytest.raises((nb.ServerError, nb.TransportError)):
                await task.wait()
            assert slots(client) == 0
            assert client.in_flight == 0
        assert len(records(emu, "result")) == 3


async def test_poll_timeouts_are_retried() -> None:
    """A poll slower than Timeouts(request=...) is abandoned and retried; the task completes."""
    async with Emulator(speed=SPEED) as emu:
        # A hung poll can never be answered in time, however slow or fast the machine is; the
        # other requests have 0.5 s each, ample for a local exchange on a loaded machine.
        slow = emu.faults.inject(Fault.hang(), endpoint="result", times=2)
        events: list[nb.events.RetryEvent] = []
        async with client_for(emu, timeouts=nb.Timeouts(request=0.5)) as client:
            client.add_retry_listener(events.append)
            result = await client.generate("slow answers")
        assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
        assert slow.fired == 2
        assert [type(e.cause) for e in events] == [nb.TransportError, nb.TransportError]


@pytest.mark.parametrize("case", ["404", "401", "400"])
async def test_client_errors_on_poll_stop_at_once(case: str) -> None:
    """A 400, 401 or 404 on a poll ends the task with its typed error after a single poll."""
    expected: type[nb.APIStatusError] = {
        "404": nb.errors.NotFoundError,
        "401": nb.AuthenticationError,
        "400": nb.BadRequestError,
    }[case]
    async with Emulator(speed=SPEED) as emu:
        key = "not-the-key" if case == "401" else emu.api_key
        poll = nb.PollPolicy(speed=SPEED)
        async with nb.Client(key, base_url=emu.base_url, poll=poll, retry=NO_SLEEP) as client:
            if case == "400":
                emu.faults.inject(Fault.status(400), endpoint="result")
                task = await client.submit("fine until polled")
            else:
                task = client.task(UNKNOWN_ID)
            with pytest.raises(expected):
                await task.wait()
            assert client.in_flight == 0
            assert slots(client) == 0
        assert len(records(emu, "result")) == 1


async def test_get_stops_at_once_on_not_found() -> None:
    """client.get() of an unknown id raises NotFoundError after one request."""
    async with Emulator(speed=SPEED) as emu:
        async with client_for(emu) as client:
            with pytest.raises(nb.errors.NotFoundError):
                await client.get(UNKNOWN_ID)
        assert len(records(emu, "result")) == 1


@pytest.mark.parametrize(
    ("endpoint", "fault", "hinted", "longest"),
    [
        ("result", Fault.rate_limit(retry_after=0.4), 0.4, 0.4),
        ("create", Fault.rate_limit(retry_after=0.3), 0.3, 0.3),
        # An HTTP date has whole seconds and is rounded up: the wait may be up to 1 s longer.
        ("result", Fault.rate_limit(retry_after=1.0, http_date=True), 1.0, 2.0),
    ],
    ids=["result-seconds", "create-seconds", "result-http-date"],
)
async def test_retry_after_holds_back_the_next_request(
    endpoint: Literal["create", "result"], fault: Fault, hinted: float, longest: float
) -> None:
    """After a 429 with Retry-After, the key pauses for the hint and nothing arrives sooner."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(fault, endpoint=endpoint, times=1)
        limiter = PauseLog()
        # No backoff sleeps: only Retry-After holds back.
        async with client_for(emu, limiter=limiter) as client:
            result = await client.generate("patience")
        assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
        seen = records(emu, endpoint)
        limited = next(i for i, r in enumerate(seen) if r.status == 429)
        # The client paused the key for what the server asked (its decision, not a stopwatch):
        # until at least the hinted time after the 429 arrived, and no more than the hint.
        ((paused_at, paused),) = limiter.pauses
        assert paused_at + paused >= seen[limited].real_time + hinted - SLACK
        assert 0 < paused <= longest + SLACK
        # On the emulator's clock: nothing arrived during the pause (the client paused only
        # after the 429 had arrived, so load can only lengthen these gaps).
        gap = seen[limited + 1].real_time - seen[limited].real_time
        assert gap >= hinted - SLACK
        later = [r for r in emu.requests if r.real_time > seen[limited].real_time]
        assert min(r.real_time for r in later) - seen[limited].real_time >= hinted - SLACK


async def test_rate_limit_pauses_every_request_of_the_key() -> None:
    """A 429 on one poll holds back every poll and create of the key, across clients sharing it."""
    hinted = 0.3
    speed = 100.0
    async with Emulator(speed=speed, duration=60.0, progress="stuck") as emu:
        limiter = PauseLog(max_concurrency=16)
        async with (
            traced_session() as (session, starts),
            client_for(emu, speed=speed, limiter=limiter, session=session) as one,
            client_for(emu, speed=speed, limiter=limiter, session=session) as two,
        ):
            tasks = [await one.submit(f"one {i}") for i in range(3)]
            tasks += [await two.submit(f"two {i}") for i in range(3)]
            await wait_for(lambda: emu.ledger.polls_received >= 12)
            emu.faults.inject(Fault.rate_limit(retry_after=hinted), endpoint="result", times=1)
            await limiter.paused.wait()
            # Submitted during the pause: its create must wait for the pause to end.
            tasks.append(await two.submit("during the pause"))
            for task in tasks:
                await task.wait()
            assert limiter.in_flight == 0
        ((paused_at, paused), *more) = limiter.pauses
        assert more == []
        assert paused == pytest.approx(hinted)
        pause_end = paused_at + paused
        # Every request went through the traced session, and none left during the pause (both
        # stamps on one clock: a request that passed the gate before the pause is stamped before).
        assert len(starts) == len(emu.requests)
        assert [t for t, _ in starts if paused_at <= t < pause_end] == []
        limited_at = next(r for r in emu.requests if r.status == 429).real_time
        assert limited_at <= paused_at
        late_create = records(emu, "create")[-1]
        assert late_create.real_time >= pause_end
        # Polling resumed: every task still running when the pause began was polled after it.
        started = min(r.real_time - r.time / speed for r in emu.requests)  # the emulator's t0
        still_running = {
            task.id
            for task in tasks
            if started + emu.tasks[task.id].end_time / speed > paused_at + 0.001
        }
        polled_after = {r.task_id for r in records(emu, "result") if r.real_time >= pause_end}
        assert tasks[-1].id in still_running
        assert still_running <= polled_after


async def test_requests_queued_for_a_connection_wait_for_a_new_pause() -> None:
    """Requests already queued for a pooled connection when a 429 arrives wait out its pause."""
    hinted = 0.5
    async with Emulator(speed=SPEED) as emu:
        quiet = nb.PollPolicy(initial_delay=10_000.0, speed=SPEED)  # only our gets poll
        limiter = PauseLog()
        async with (
            traced_session() as (session, starts),
            client_for(
                emu, max_connections=1, poll=quiet, limiter=limiter, session=session
            ) as client,
        ):
            task = await client.submit("queued polls")
            emu.faults.inject(Fault.delay(0.2), endpoint="result", times=1)
            emu.faults.inject(Fault.rate_limit(retry_after=hinted), endpoint="result", times=1)
            emu.faults.inject(Fault.delay(0.1), endpoint="result", times=3)
            snapshots: list[nb.TaskSnapshot] = []

            async def get() -> None:
                snapshots.append(await client.get(task.id))

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(get)
        assert len(snapshots) == 8
        ((paused_at, paused),) = limiter.pauses
        assert paused == pytest.approx(hinted)
        # On one clock: no request left between the pause and its end, queued ones included.
        assert len(starts) == len(emu.requests)
        assert [t for t, _ in starts if paused_at <= t < paused_at + paused] == []
        polls = records(emu, "result")
        assert [r.status for r in polls].count(429) == 1


async def test_adaptive_polling_is_frugal() -> None:
    """With smooth progress, 8-20 s tasks take a few polls each, far fewer than 0.5 s polling."""
    # At speed 10 a task takes 0.8-2 s, so that a loaded machine's scheduling delays (a few ms)
    # are a small fraction of the 2.5 s lateness allowed below.
    speed = 10.0
    async with Emulator(speed=speed, progress="smooth", seed=3) as emu:
        async with client_for(emu, speed=speed, max_concurrency=None, seed=1) as client:
            results = await client.map([f"smooth {i}" for i in range(20)])
        assert len(results) == 20
        assert all(r.snapshot.status is nb.TaskStatus.SUCCEEDED for r in results)
        durations = [task.duration for task in emu.tasks.values()]
        fixed = statistics.mean(durations) / 0.5  # polls per task at a fixed 0.5 s interval
        per_task = emu.ledger.polls_received / len(durations)
        print(f"\nadaptive polling: {per_task:.2f} polls per task (fixed 0.5 s: {fixed:.1f})")
        assert per_task <= fixed / 5
        assert per_task <= 5.0
        # Frugal but prompt: the terminal poll comes soon after the task ends, and is the last.
        lateness = []
        for task in emu.tasks.values():
            polls = [r for r in records(emu, "result") if r.task_id == task.id]
            # A poll stamped (on arrival) at or after the end sees it: polling stops there.
            assert sum(r.time >= task.end_time for r in polls) <= 1
            lateness.append(polls[-1].time - task.end_time)
        print(f"median lateness: {statistics.median(lateness):.2f} emulated s")
        assert statistics.median(lateness) <= 2.5


async def test_first_poll_waits_for_the_initial_delay() -> None:
    """With PollPolicy(initial_delay=...), no task is polled before that delay has passed."""
    # 20 emulated seconds: later than the model's own first poll (0.9 x 8 s), so that only an
    # honoured initial_delay passes the lower bound. At speed 25 the upper bound leaves 0.8 s
    # of real time for a loaded machine's scheduling delays.
    speed = 25.0
    delay = 20.0
    async with Emulator(speed=speed, duration=30.0) as emu:
        poll = nb.PollPolicy(initial_delay=delay, speed=speed)
        async with client_for(emu, poll=poll, max_concurrency=None) as client:
            tasks = [await client.submit(f"patient {i}") for i in range(5)]
            for task in tasks:
                await task.wait()
        for task in tasks:
            created = emu.tasks[task.id].created_at
            first = next(r for r in records(emu, "result") if r.task_id == task.id)
            # The client schedules from the create's answer, which comes after created_at.
            assert first.time - created >= delay
            assert first.time - created <= 2 * delay


async def test_linear_tasks_take_about_two_polls_end_to_end() -> None:
    """Against the emulator, 8-20 s tasks with linear progress take about two polls each."""
    # At speed 5 a task takes 1.6-4 s and min_interval is 0.1 s. Polls never come early; the
    # second misses an end only if a load spike delays reading the create's answer more than the
    # first poll's, and then one more comes after min_interval. A mean of 3 would need every
    # task to miss by more than that: far beyond the scheduling delays of a busy machine.
    speed = 5.0
    async with Emulator(speed=speed, progress="smooth", seed=5) as emu:
        async with client_for(emu, speed=speed, max_concurrency=None, seed=2) as client:
            tasks = [await client.submit(f"linear {i}") for i in range(12)]
            for task in tasks:
                await task.wait()
        per_task = []
        for task in tasks:
            polls = [r for r in records(emu, "result") if r.task_id == task.id]
            # Exactly one poll (the last) arrived at or after the end, and saw it.
            assert [r.time >= emu.tasks[task.id].end_time for r in polls][-1]
            assert sum(r.time >= emu.tasks[task.id].end_time for r in polls) == 1
            per_task.append(len(polls))
        print(f"\npolls per task: {sorted(per_task)}")
        assert statistics.mean(per_task) <= 3.0


async def test_the_task_deadline_holds_over_a_predicted_end() -> None:
    """A task whose progress predicts an end past the task deadline ends at the deadline."""
    speed = 20.0
    # 60 emulated seconds (3 s); the deadline passes after 1 s (20 emulated seconds), so the end
    # its progress predicts lies far beyond it.
    async with Emulator(speed=speed, progress="smooth", duration=60.0) as emu:
        timeouts = nb.Timeouts(task=1.0)
        async with client_for(emu, speed=speed, timeouts=timeouts) as client:
            task = await client.submit("too long")
            with pytest.raises(nb.TaskTimeoutError):
                await task.wait()
            assert slots(client) == 0
        polls = records(emu, "result")
        # The first reading, a second to confirm an end beyond every duration expected, and the
        # one at the deadline (polls never come early; under load they can only be fewer).
        assert 1 <= len(polls) <= 3
        assert polls[-1].time < emu.tasks[task.id].end_time
