"""RedisLimiter in one process against a real redis-server: slots, order, pauses, budget, faults."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from _redis_support import RedisServer, free_port, warm

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

pytestmark = pytest.mark.anyio

KEY = "nb-redis-test-key"


def _name() -> str:
    return f"unit-{os.urandom(4).hex()}"


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis client, to look at what the limiter stored."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _until(condition: Any, what: str) -> None:
    """Poll *condition* (an async callable) until it holds; a hang fails the test after 30 s."""
    deadline = time.monotonic() + 30
    while not await condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("url", {"url": "http://localhost:6379"}),
        ("name", {"name": ""}),
        ("name", {"name": "a{b}"}),
        ("max_concurrency", {"max_concurrency": 0}),
        ("max_requests_per_second", {"max_requests_per_second": 0}),
        ("burst", {"burst": 0}),
        ("lease_seconds", {"lease_seconds": 0}),
        ("lease_seconds", {"lease_seconds": float("nan")}),
        ("max_credits", {"max_credits": -1}),
    ],
)
def test_bad_arguments_name_the_field(field: str, kwargs: dict[str, Any]) -> None:
    """Each bad argument raises InvalidRequestError naming its field, before Redis is touched."""
    arguments: dict[str, Any] = {"url": "redis://127.0.0.1:1/0", "name": "n", "max_concurrency": 2}
    arguments.update(kwargs)
    url = arguments.pop("url")
    with pytest.raises(nb.InvalidRequestError) as caught:
        nb.RedisLimiter(url, **arguments)
    assert caught.value.field == field


def test_the_package_imports_without_redis_and_names_the_extra() -> None:
    """Without redis-py the package imports, and RedisLimiter names the extra to install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import nanobanana_async as nb\n"
        "try:\n"
        "    nb.RedisLimiter('redis://localhost/0', name='n', max_concurrency=1)\n"
        "except nb.NanoBananaError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.startswith("LimiterUnavailableError")
    assert "pip install 'nanobanana-async[redis]'" in out


async def test_unreachable_redis_fails_closed_without_the_password() -> None:
    """Without Redis, acquire/ready('create')/reserve raise naming Redis and the bare URL."""
    port = free_port()
    limiter = nb.RedisLimiter(
        f"redis://user:s3cret@127.0.0.1:{port}/0?password=s3cret",
        name=_name(),
        max_concurrency=2,
        max_credits=10,
    )
    async with limiter:
        assert "s3cret" not in repr(limiter)
        for call in (limiter.acquire(), limiter.ready("create"), limiter.reserve(1)):
            with pytest.raises(nb.errors.LimiterUnavailableError) as caught:
                await call
            message = str(caught.value)
            assert "Redis" in message
            assert f"redis://user@127.0.0.1:{port}/0" in message
            assert "s3cret" not in message


async def test_calls_for_running_tasks_never_raise_when_redis_is_unreachable() -> None:
    """ready('poll'), renew, release, pause, settle and refund fall back quietly without Redis."""
    async with nb.RedisLimiter(
        f"redis://127.0.0.1:{free_port()}/0", name=_name(), max_concurrency=2, max_credits=10
    ) as limiter:
        lease = nb.limiters.Lease("not-held")
        await limiter.ready("poll")
        await limiter.renew(lease)
        await limiter.pause(0.0)
        await limiter.settle(5, 5)
        await limiter.refund(5)
        await limiter.release(lease)


async def test_slots_are_shared_and_served_in_arrival_order(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """Three limiters (as three processes) share one slot, handed out in the order asked for."""
    name = _name()
    await warm(redis_server.url, name)
    queue = f"nanobanana:{{{name}}}:queue"
    limiters = [
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=2.0)
        for _ in range(3)
    ]
    try:
        first = await limiters[0].acquire()
        order: list[int] = []

        async def take(index: int) -> nb.limiters.Lease:
            lease = await limiters[index].acquire()
            order.append(index)
            return lease

        jobs = []
        for count, index in enumerate([1, 2, 1, 0], start=1):
            jobs.append(asyncio.ensure_future(take(index)))

            async def queued(count: int = count) -> bool:
                return int(await raw.zcard(queue)) == count

            await _until(queued, f"{count} waiters queued")
        holder, lease = 0, first
        for job in jobs:
            await limiters[holder].release(lease)
            lease = await job
            holder = order[-1]
        assert order == [1, 2, 1, 0]
        await limiters[holder].release(lease)
    finally:
        for limiter in limiters:
            await limiter.aclose()


async def test_a_cancelled_acquire_leaves_no_waiter_behind(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """Cancelling a queued acquire removes its place, so the next waiter is served at once."""
    name = _name()
    await warm(redis_server.url, name)
    queue = f"nanobanana:{{{name}}}:queue"
    async with (
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=2.0) as one,
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=2.0) as two,
    ):
        lease = await one.acquire()
        job = asyncio.ensure_future(two.acquire())

        async def queued() -> bool:
            return int(await raw.zcard(queue)) == 1

        async def empty() -> bool:
            return int(await raw.zcard(queue)) == 0

        await _until(queued, "the waiter queued")
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await _until(empty, "the cancelled waiter gone")
        await one.release(lease)
        again = await two.acquire()
        await two.release(again)


async def test_a_pause_holds_every_limiter_of_the_name(redis_server: RedisServer) -> None:
    """A pause set through one limiter holds the creates of another, and the polls of a third."""
    name = _name()
    async with (
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=2.0) as one,
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=2.0) as two,
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=2.0) as three,
    ):
        await two.ready("create")  # connected: its wait below is the pause alone
        await one.pause(0.5)
        started = time.monotonic()

        async def waited(limiter: nb.RedisLimiter, kind: nb.limiters.RequestKind) -> float:
            await limiter.ready(kind)
            return time.monotonic() - started

        create, poll = await asyncio.gather(waited(two, "create"), waited(three, "poll"))
        assert create >= 0.5 - 0.01
        assert poll >= 0.5 - 0.01


async def test_the_request_rate_bucket_is_shared(redis_server: RedisServer) -> None:
    """At 2 requests per second with a burst of 1, a second limiter waits for the first's token."""
    name = _name()
    async with (
        nb.RedisLimiter(
            redis_server.url,
            name=name,
            max_concurrency=1,
            max_requests_per_second=2.0,
            lease_seconds=2.0,
        ) as one,
        nb.RedisLimiter(
            redis_server.url,
            name=name,
            max_concurrency=1,
            max_requests_per_second=2.0,
            lease_seconds=2.0,
        ) as two,
    ):
        await one.ready("create")
        started = time.monotonic()
        await two.ready("create")
        assert time.monotonic() - started >= 0.5 - 0.01


async def test_the_credit_budget_is_shared(redis_server: RedisServer) -> None:
    """Reservations of two limiters add up against one budget; settling at 0 gives them back."""
    name = _name()
    await warm(redis_server.url, name)
    async with (
        nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=1, max_credits=25, lease_seconds=2.0
        ) as one,
        nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=1, max_credits=25, lease_seconds=2.0
        ) as two,
    ):
        await one.reserve(15)
        with pytest.raises(nb.BudgetExceededError) as caught:
            await two.reserve(15)
        assert (caught.value.cost, caught.value.spent, caught.value.budget) == (15, 15, 25)
        await one.settle(15, 0)  # never sent
        await two.reserve(15)
        await two.settle(15, 15)
        await two.refund(15)  # the task failed
        await one.reserve(20)


async def test_a_restart_re_asserts_held_slots_before_granting_new_ones(
    own_redis_server: RedisServer,
) -> None:
    """After Redis restarts empty, the slots a live process holds still count against the cap."""
    name = _name()
    await warm(own_redis_server.url, name)
    leases_key = f"nanobanana:{{{name}}}:leases"
    async with (
        nb.RedisLimiter(
            own_redis_server.url, name=name, max_concurrency=2, lease_seconds=1.5
        ) as holder,
        nb.RedisLimiter(
            own_redis_server.url, name=name, max_concurrency=2, lease_seconds=1.5
        ) as other,
    ):
        held = [await holder.acquire(), await holder.acquire()]
        await other.ready("poll")
        own_redis_server.restart()
        job = asyncio.ensure_future(other.acquire())
        raw = redis.asyncio.Redis.from_url(own_redis_server.url, decode_responses=True)
        try:

            async def reasserted() -> bool:
                return int(await raw.zcard(leases_key)) == 2

            await _until(reasserted, "the holder's two slots back in Redis")
            # Two lease times: a lapsed or forgotten slot would have been handed out by now.
            await asyncio.sleep(3.0)
            assert not job.done()
            await holder.release(held[0])
            lease = await asyncio.wait_for(job, 30)
            await other.release(lease)
            await holder.release(held[1])
        finally:
            await raw.aclose()


async def test_redis_going_away_fails_new_creates_but_running_tasks_finish(
    own_redis_server: RedisServer,
) -> None:
    """With Redis gone mid-run, running tasks are polled to the end and new submits fail unsent."""
    poll = nb.PollPolicy(initial_delay=20.0, min_interval=4.0, max_interval=4.0, speed=20.0)
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=20.0) as emu:
        name = _name()
        await warm(own_redis_server.url, name)
        async with nb.RedisLimiter(
            own_redis_server.url, name=name, max_concurrency=2, lease_seconds=2.0
        ) as limiter:
            async with nb.Client(KEY, base_url=emu.base_url, limiter=limiter, poll=poll) as client:
                tasks = [await client.submit("a", model="nano-banana-fast") for _ in range(2)]
                own_redis_server.stop()
                with pytest.raises(nb.errors.LimiterUnavailableError) as caught:
                    await client.submit("b", model="nano-banana-fast")
                assert own_redis_server.url in str(caught.value)
                results = [await task.wait(timeout=60) for task in tasks]
        assert [len(result.images) for result in results] == [1, 1]
        assert emu.ledger.creates_received == 2
        assert emu.ledger.polls_received >= 2
