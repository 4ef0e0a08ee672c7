"""Polling: safe failures retried, client errors final, Retry-After is law, timing adapts."""

from __future__ import annotations

import statistics
import time
from typing import Literal

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import NO_SLEEP, SPEED, client_for, records, slots, wait_for

pytestmark = pytest.mark.anyio

#: Clock slack between the emulator's arrival stamps and the client's pause (seconds).
SLACK = 0.02
#: A request that passed the limiter just before the pause may arrive this much later.
IN_FLIGHT_SLACK = 0.05
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
        events: list[nb.RetryEvent] = []
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
        slow = emu.faults.inject(Fault.delay(0.4), endpoint="result", times=2)
        events: list[nb.RetryEvent] = []
        async with client_for(emu, timeouts=nb.Timeouts(request=0.1)) as client:
            client.add_retry_listener(events.append)
            result = await client.generate("slow answers")
        assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
        assert slow.fired == 2
        assert [type(e.cause) for e in events] == [nb.TransportError, nb.TransportError]


@pytest.mark.parametrize("case", ["404", "401", "400"])
async def test_client_errors_on_poll_stop_at_once(case: str) -> None:
    """A 400, 401 or 404 on a poll ends the task with its typed error after a single poll."""
    expected: type[nb.APIStatusError] = {
        "404": nb.NotFoundError,
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
            with pytest.raises(nb.NotFoundError):
                await client.get(UNKNOWN_ID)
        assert len(records(emu, "result")) == 1


@pytest.mark.parametrize(
    ("endpoint", "fault", "hinted", "longest"),
    [
        ("result", Fault.rate_limit(retry_after=0.4), 0.4, 0.9),
        ("create", Fault.rate_limit(retry_after=0.3), 0.3, 0.8),
        ("result", Fault.rate_limit(retry_after=1.0, http_date=True), 1.0, 2.5),
    ],
    ids=["result-seconds", "create-seconds", "result-http-date"],
)
async def test_retry_after_holds_back_the_next_request(
    endpoint: Literal["create", "result"], fault: Fault, hinted: float, longest: float
) -> None:
    """After a 429 with Retry-After, the next request arrives no sooner than the hinted time."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(fault, endpoint=endpoint, times=1)
        async with client_for(emu) as client:  # no backoff sleeps: only Retry-After holds back
            result = await client.generate("patience")
        assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
        seen = records(emu, endpoint)
        limited = next(i for i, r in enumerate(seen) if r.status == 429)
        gap = seen[limited + 1].real_time - seen[limited].real_time
        assert hinted - SLACK <= gap <= longest
        later = [r for r in emu.requests if r.real_time > seen[limited].real_time]
        assert min(r.real_time for r in later) - seen[limited].real_time >= hinted - SLACK


async def test_rate_limit_pauses_every_request_of_the_key() -> None:
    """A 429 on one poll holds back every poll and create of the key, across clients sharing it."""
    hinted = 0.3
    async with Emulator(speed=100.0, duration=60.0, progress="stuck") as emu:
        limiter = nb.Limiter(max_concurrency=16)
        paused_at: list[float] = []
        paused = anyio.Event()

        def on_retry(event: nb.RetryEvent) -> None:
            if isinstance(event.cause, nb.RateLimitError):
                paused_at.append(time.monotonic())
                paused.set()

        async with (
            client_for(emu, speed=100.0, limiter=limiter) as one,
            client_for(emu, speed=100.0, limiter=limiter) as two,
        ):
            one.add_retry_listener(on_retry)
            two.add_retry_listener(on_retry)
            tasks = [await one.submit(f"one {i}") for i in range(3)]
            tasks += [await two.submit(f"two {i}") for i in range(3)]
            await wait_for(lambda: emu.ledger.polls_received >= 12)
            emu.faults.inject(Fault.rate_limit(retry_after=hinted), endpoint="result", times=1)
            await paused.wait()
            # Submitted during the pause: its create must wait for the pause to end.
            tasks.append(await two.submit("during the pause"))
            for task in tasks:
                await task.wait()
            assert limiter.in_flight == 0
        limited_at = next(r for r in emu.requests if r.status == 429).real_time
        pause_end = limited_at + hinted - SLACK
        early = [
            r
            for r in emu.requests
            if paused_at[0] + IN_FLIGHT_SLACK < r.real_time < pause_end and r.status != 429
        ]
        assert early == []
        late_create = records(emu, "create")[-1]
        assert late_create.real_time >= pause_end
        # The pause really held traffic back: the polls resumed right after it.
        resumed = [r for r in records(emu, "result") if r.real_time >= pause_end]
        assert len(resumed) >= 7


async def test_requests_queued_for_a_connection_wait_for_a_new_pause() -> None:
    """Requests already queued for a pooled connection when a 429 arrives wait out its pause."""
    hinted = 0.5
    async with Emulator(speed=SPEED) as emu:
        quiet = nb.PollPolicy(initial_delay=10_000.0, speed=SPEED)  # only our gets poll
        async with client_for(emu, max_connections=1, poll=quiet) as client:
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
        limited_at = next(r for r in emu.requests if r.status == 429).real_time
        early = [
            r
            for r in records(emu, "result")
            if limited_at + IN_FLIGHT_SLACK < r.real_time < limited_at + hinted - SLACK
        ]
        assert early == []


async def test_adaptive_polling_is_frugal() -> None:
    """With smooth progress, 8-20 s tasks take a few polls each, far fewer than 0.5 s polling."""
    speed = 50.0
    async with Emulator(speed=speed, progress="smooth", seed=3) as emu:
        async with client_for(emu, speed=speed, max_concurrency=None, seed=1) as client:
            results = await client.map([f"smooth {i}" for i in range(20)])
        assert len(results) == 20
        durations = [task.duration for task in emu.tasks.values()]
        fixed = statistics.mean(durations) / 0.5  # polls per task at a fixed 0.5 s interval
        per_task = emu.ledger.polls_received / len(durations)
        print(f"\nadaptive polling: {per_task:.2f} polls per task (fixed 0.5 s: {fixed:.1f})")
        assert per_task <= fixed / 5
        assert per_task <= 5.0
        # Frugal but prompt: the terminal poll comes soon after the task ends.
        lateness = []
        for task in emu.tasks.values():
            last = [r for r in records(emu, "result") if r.task_id == task.id][-1]
            lateness.append(last.time - task.end_time)
        assert min(lateness) >= 0
        assert statistics.median(lateness) <= 2.5


async def test_first_poll_waits_for_the_initial_delay() -> None:
    """With PollPolicy(initial_delay=...), no task is polled before that delay has passed."""
    speed = 50.0
    async with Emulator(speed=speed, duration=30.0) as emu:
        poll = nb.PollPolicy(initial_delay=5.0, speed=speed)
        async with client_for(emu, poll=poll, max_concurrency=None) as client:
            tasks = [await client.submit(f"patient {i}") for i in range(5)]
            for task in tasks:
                await task.wait()
        for task in tasks:
            created = emu.tasks[task.id].created_at
            first = next(r for r in records(emu, "result") if r.task_id == task.id)
            assert first.time - created >= 5.0
            assert first.time - created <= 5.0 + 5.0
