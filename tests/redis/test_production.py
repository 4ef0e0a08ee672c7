"""RedisLimiter in production: no leaks, instant start, restores, dead processes, clusters, logs."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.exceptions
from _redis_support import RedisServer

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

pytestmark = pytest.mark.anyio

KEY = "nb-redis-prod-key"


def _name() -> str:
    return f"prod-{os.urandom(4).hex()}"


async def _until(condition: Any, what: str, patience: float = 30.0) -> None:
    """Poll *condition* (an async callable) until it holds; a hang fails the test."""
    deadline = time.monotonic() + patience
    while not await condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


async def test_200_one_at_a_time_submits_leak_no_connection_or_task(
    redis_server: RedisServer,
) -> None:
    """200 submits one after another go through one limiter, and aclose() leaves no task behind."""
    before = len(asyncio.all_tasks())
    poll = nb.PollPolicy(initial_delay=0.0, min_interval=0.01, max_interval=0.01, speed=20.0)
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=0.2) as emu:
        limiter = nb.RedisLimiter(
            redis_server.url, name=_name(), max_concurrency=4, lease_seconds=5.0
        )
        async with limiter:
            async with nb.Client(KEY, base_url=emu.base_url, limiter=limiter, poll=poll) as client:
                tasks = [await client.submit("a", model="nano-banana-fast") for _ in range(200)]
                await asyncio.gather(*(task.wait(timeout=60) for task in tasks))
        assert emu.ledger.tasks_created == 200
    assert len(asyncio.all_tasks()) == before


async def test_a_task_costs_at_most_two_round_trips(redis_server: RedisServer) -> None:
    """Without a budget, acquire + ready("create") + release cost at most 2 requests to Redis."""
    async with nb.RedisLimiter(
        redis_server.url, name=_name(), max_concurrency=2, lease_seconds=5.0
    ) as limiter:
        await limiter.release(await limiter.acquire())  # subscribe, learn the epoch
        sent = limiter.requests_sent
        for _ in range(20):
            lease = await limiter.acquire()
            await limiter.ready("create")
            await limiter.release(lease)
        assert limiter.requests_sent - sent <= 2 * 20


def _gate(
    limiter: nb.RedisLimiter, script: str, token: str
) -> tuple[asyncio.Event, asyncio.Event, asyncio.Event]:
    """Hold the first run of *script* naming *token* before it is sent to Redis.

    Returns (reached, gate, done): set when the run is held, to set to let it go, set when its
    answer came back.
    """
    reached, gate, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    store = limiter._store
    original = store.run

    async def run(name: str, args: Any, keys: Any = None) -> Any:
        if name != script or token not in args or reached.is_set():
            return await original(name, args, keys)
        reached.set()
        await gate.wait()
        try:
            return await original(name, args, keys)
        finally:
            done.set()

    store.run = run  # type: ignore[method-assign]
    return reached, gate, done


async def test_a_renewal_never_brings_back_a_released_lease(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A keeper renewal of a lease released after its snapshot (a late renewal) leaves it gone."""
    name = _name()
    caplog.set_level(logging.WARNING, logger="nanobanana_async")
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=1, lease_seconds=3.0
        ) as limiter:
            lease = await limiter.acquire()
            reached, gate, done = _gate(limiter, "renew", lease.token)
            # The keeper's own loop picks the lease (its snapshot) and is held before Redis.
            await asyncio.wait_for(reached.wait(), 30)
            await limiter.release(lease)  # the release reaches Redis first
            assert await raw.zscore(f"nanobanana:{{{name}}}:leases", lease.token) is None
            gate.set()
            await asyncio.wait_for(done.wait(), 30)  # then the late renewal runs
            assert await raw.zscore(f"nanobanana:{{{name}}}:leases", lease.token) is None
            assert await raw.zcard(f"nanobanana:{{{name}}}:leases") == 0
        assert not [r for r in caplog.records if "lapsed" in r.getMessage()]
    finally:
        await raw.aclose()


async def test_a_reassertion_never_brings_back_a_released_lease(
    redis_server: RedisServer,
) -> None:
    """A re-assertion after a flush, sent before a release that reached Redis first, frees it."""
    name = _name()
    leases = f"nanobanana:{{{name}}}:leases"
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=1, lease_seconds=60.0
        ) as limiter:
            lease = await limiter.acquire()
            reached, gate, done = _gate(limiter, "reassert", lease.token)
            for key in await raw.keys(f"nanobanana:{{{name}}}:*"):
                await raw.delete(key)  # the store is lost (a flush of this name)
            # The next call finds a new epoch: the re-assertion of the lease is held on its way.
            check = asyncio.ensure_future(limiter.ready("poll"))
            await asyncio.wait_for(reached.wait(), 30)
            await limiter.release(lease)  # the release reaches Redis first
            gate.set()
            await asyncio.wait_for(done.wait(), 30)  # then the re-assertion runs
            await asyncio.wait_for(check, 30)
            assert await raw.zscore(leases, lease.token) is None
            assert await raw.zcard(leases) == 0
    finally:
        await raw.aclose()


async def test_an_older_snapshot_restored_is_a_new_store(own_redis_server: RedisServer) -> None:
    """Redis restoring an older snapshot (slots and credits since given back) is a lost store."""
    name = _name()
    url = own_redis_server.url
    raw = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        async with nb.RedisLimiter(
            url, name=name, max_concurrency=2, lease_seconds=60.0, max_credits=10
        ) as first:
            held = [await first.acquire(), await first.acquire()]
            await first.reserve(10)
            await raw.save()  # the snapshot: 2 slots and 10 credits taken
            for lease in held:
                await first.release(lease)
            await first.settle(10, 0)
        await raw.aclose()
        own_redis_server.restart()  # loads the older snapshot
        raw = redis.asyncio.Redis.from_url(url, decode_responses=True)
        assert await raw.zcard(f"nanobanana:{{{name}}}:leases") == 2
        async with nb.RedisLimiter(
            url, name=name, max_concurrency=2, lease_seconds=60.0, max_credits=10
        ) as later:
            leases = [await asyncio.wait_for(later.acquire(), 20) for _ in range(2)]
            await asyncio.wait_for(later.reserve(10), 20)
            with pytest.raises(nb.BudgetExceededError):
                await later.reserve(1)
            for lease in leases:
                await later.release(lease)
    finally:
        await raw.aclose()


async def test_live_holders_across_an_older_snapshot_keep_the_cap(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Holders live across a restored older snapshot: at most 2 x the cap until they re-assert,
    then the cap and the budget count them again (the documented overshoot bound)."""
    name, url = _name(), own_redis_server.url
    caplog.set_level(logging.WARNING, logger="nanobanana_async")
    raw = redis.asyncio.Redis.from_url(url, decode_responses=True)
    limits: dict[str, Any] = {"max_concurrency": 2, "lease_seconds": 3.0, "max_credits": 10}
    try:
        async with nb.RedisLimiter(url, name=name, **limits) as holder:
            await holder.release(await holder.acquire())
            await raw.save()  # the older snapshot: the store known, nothing held
            held = [await holder.acquire(), await holder.acquire()]
            await holder.reserve(10)
            await raw.aclose()
            own_redis_server.restart()  # loads the older snapshot, the holder lives on
            raw = redis.asyncio.Redis.from_url(url, decode_responses=True)
            async with nb.RedisLimiter(url, name=name, **limits) as other:
                # Before the holder notices: the documented overshoot, up to 2 x the cap.
                mine = [await asyncio.wait_for(other.acquire(), 20) for _ in range(2)]
                assert holder.held + other.held <= 2 * 2
                waiting = asyncio.ensure_future(other.acquire())

                async def reasserted() -> bool:
                    return any("re-asserting 2 slot" in r.getMessage() for r in caplog.records)

                await _until(reasserted, "the live holder started re-asserting")

                async def all_counted() -> bool:
                    # The warning comes just before the re-assertion reaches Redis.
                    return await raw.zcard(f"nanobanana:{{{name}}}:leases") == 4

                await _until(all_counted, "the holder's 2 slots counted next to the other's 2")

                async def grace_over() -> bool:
                    grace = await raw.hget(f"nanobanana:{{{name}}}:meta", "grace")
                    seconds, micros = await raw.time()
                    return seconds * 1000 + micros // 1000 > int(grace or 0)

                await _until(grace_over, "the grace of the re-assertion ended")
                # After: the holder's 2 slots count, so the other's releases free nothing to take.
                for lease in mine:
                    await other.release(lease)
                mark = other.requests_sent

                async def round_ran() -> bool:
                    # Two requests after the releases: a whole acquire round ran meanwhile.
                    return waiting.done() or other.requests_sent >= mark + 2

                await _until(round_ran, "an acquire round after the releases")
                assert not waiting.done()
                assert holder.held + other.held <= 2
                with pytest.raises(nb.BudgetExceededError):
                    await other.reserve(1)  # the holder's 10 credits count again
                await holder.release(held[0])
                await other.release(await asyncio.wait_for(waiting, 20))
            await holder.release(held[1])
            await holder.settle(10, 0)
    finally:
        await raw.aclose()


async def test_a_new_names_first_create_goes_out_at_once(redis_server: RedisServer) -> None:
    """A new name grants its first slot and reservation in under 1 s, with no grace at all."""
    name = _name()
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=1.0) as emu:
            async with nb.RedisLimiter(
                redis_server.url, name=name, max_concurrency=2, lease_seconds=60.0, max_credits=100
            ) as limiter:
                started = time.monotonic()
                lease = await asyncio.wait_for(limiter.acquire(), 20)
                await asyncio.wait_for(limiter.reserve(1), 20)
                granted = time.monotonic() - started
                # The structural fact (a load cannot change it): the new store set no grace.
                assert await raw.hget(f"nanobanana:{{{name}}}:meta", "grace") == "0"
                assert granted < 1.0  # two local round trips, and no wait of any kind
                await limiter.settle(1, 0)
                await limiter.release(lease)
                async with nb.Client(KEY, base_url=emu.base_url, limiter=limiter) as client:
                    task = await asyncio.wait_for(client.submit("a", model="nano-banana-fast"), 20)
                    assert task.id
            assert emu.ledger.creates_received == 1
    finally:
        await raw.aclose()


async def test_strict_mode_keeps_the_old_start(redis_server: RedisServer) -> None:
    """With strict=True a new name grants nothing at first (the store's grace of one lease)."""
    async with nb.RedisLimiter(
        redis_server.url, name=_name(), max_concurrency=1, lease_seconds=60.0, strict=True
    ) as limiter:
        job = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(1.0)
        assert not job.done()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job


_KILLED = """
import asyncio, sys
import nanobanana_async as nb

async def main():
    limiter = nb.RedisLimiter(sys.argv[1], name=sys.argv[2], max_concurrency=1,
                              lease_seconds=1.0, max_credits=10)
    await limiter.acquire()
    await limiter.reserve(10)
    asyncio.ensure_future(limiter.acquire())  # a waiter in the queue too
    await asyncio.sleep(0.3)
    print("held", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_killed_process_leaves_no_reservation_and_no_key(
    redis_server: RedisServer,
) -> None:
    """A SIGKILLed process's slot and unsent reservation come back, and every key lapses."""
    name = _name()
    process = subprocess.Popen(  # noqa: ASYNC220 - read in a thread below
        [sys.executable, "-c", _KILLED, redis_server.url, name], stdout=subprocess.PIPE
    )
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        assert line.strip() == b"held"
        process.kill()
        await asyncio.to_thread(process.wait)
        async with nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=1, lease_seconds=1.0, max_credits=10
        ) as limiter:
            lease = await asyncio.wait_for(limiter.acquire(), 30)

            async def reserved() -> bool:
                # The dead process's lease and heartbeat lapse apart (a few ms under load): the
                # slot may come back a little before its reservation does.
                try:
                    await limiter.reserve(10)
                except nb.BudgetExceededError:
                    return False
                return True

            await _until(reserved, "the dead process's reservation of 10 came back")
            await limiter.settle(10, 0)
            await limiter.release(lease)

        async def all_gone() -> bool:
            keys = await raw.keys(f"nanobanana:{{{name}}}:*")
            # The answers of credit changes (op keys) lapse on their own a little later.
            return all(":op:" in key for key in keys)

        await _until(all_gone, "every key of the name lapsed")
        for key in await raw.keys(f"nanobanana:{{{name}}}:*"):
            assert await raw.pttl(key) > 0
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()
        await raw.aclose()


async def test_a_redis_client_object_is_accepted(redis_server: RedisServer) -> None:
    """A redis.asyncio client (bytes answers) works as the store, and stays open after aclose."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        async with nb.RedisLimiter(
            client, name=_name(), max_concurrency=1, lease_seconds=5.0, max_credits=5
        ) as limiter:
            await limiter.release(await limiter.acquire())
            await limiter.ready("create")
            await limiter.reserve(5)
            with pytest.raises(nb.BudgetExceededError):
                await limiter.reserve(1)
        assert await client.ping()
    finally:
        await client.aclose()


async def test_long_waits_say_why_at_info(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A create waiting over 2 s for the cap, or for a pause, logs why at INFO level."""
    name = _name()
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    async with (
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=5.0) as one,
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=5.0) as two,
    ):
        lease = await one.acquire()
        job = asyncio.ensure_future(two.acquire())

        async def told() -> bool:
            return any("the cap" in r.getMessage() for r in caplog.records)

        await _until(told, "the cap wait told")
        await one.release(lease)
        await two.release(await job)
        await one.pause(2.5)
        await asyncio.sleep(0.3)  # past the pass a grant gives the next create
        await two.ready("create")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("429" in message for message in messages)


async def test_a_user_denied_info_can_use_the_limiter(redis_server: RedisServer) -> None:
    """A Redis user whose ACL refuses INFO gets slots, a pause and budget reservations."""
    user = f"nb-noinfo-{os.urandom(3).hex()}"
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await raw.execute_command(
            "ACL", "SETUSER", user, "on", ">s3cret", "~*", "&*", "+@all", "-info"
        )
        url = f"redis://{user}:s3cret@127.0.0.1:{redis_server.port}/0"
        probe = redis.asyncio.Redis.from_url(url)
        try:
            with pytest.raises(redis.exceptions.NoPermissionError):
                await probe.info("server")  # the ACL holds
        finally:
            await probe.aclose()
        async with nb.RedisLimiter(
            url, name=_name(), max_concurrency=1, lease_seconds=5.0, max_credits=5
        ) as limiter:
            await limiter.release(await asyncio.wait_for(limiter.acquire(), 20))
            await limiter.ready("create")
            await limiter.reserve(5)
            with pytest.raises(nb.BudgetExceededError):
                await limiter.reserve(1)
            await limiter.settle(5, 0)
    finally:
        await raw.execute_command("ACL", "DELUSER", user)
        await raw.aclose()


async def test_releases_behind_one_on_its_way_go_in_one_request(redis_server: RedisServer) -> None:
    """Releases made while one is on its way to Redis go together in one more request, and each
    returns only once its slot is gone from Redis."""
    name = _name()
    leases_key = f"nanobanana:{{{name}}}:leases"
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=4, lease_seconds=60.0
        ) as limiter:
            leases = [await limiter.acquire() for _ in range(4)]
            reached, gate, _ = _gate(limiter, "release", leases[0].token)
            sent: list[list[str]] = []
            store = limiter._store
            gated = store.run

            async def run(script: str, args: Any, keys: Any = None) -> Any:
                if script == "release":
                    sent.append([str(arg) for arg in args[2:]])
                return await gated(script, args, keys)

            store.run = run  # type: ignore[method-assign]
            first = asyncio.ensure_future(limiter.release(leases[0]))
            await asyncio.wait_for(reached.wait(), 30)

            async def release(lease: nb.limiters.Lease) -> float | None:
                await limiter.release(lease)
                return await raw.zscore(leases_key, lease.token)

            rest = [asyncio.ensure_future(release(lease)) for lease in leases[1:]]
            await asyncio.sleep(0)  # they queue behind the first
            assert not any(job.done() for job in rest)
            gate.set()
            assert await asyncio.wait_for(asyncio.gather(*rest), 30) == [None, None, None]
            await first
            assert sent == [[leases[0].token], [lease.token for lease in leases[1:]]]
            assert await raw.zcard(leases_key) == 0
    finally:
        await raw.aclose()


async def test_a_cancelled_release_still_gives_its_slot_back(redis_server: RedisServer) -> None:
    """A release cancelled while queued behind another, and one cancelled on its way to Redis,
    still leave Redis soon (the dispatcher sends them), not after their lease lapses."""
    name = _name()
    leases_key = f"nanobanana:{{{name}}}:leases"
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=4, lease_seconds=60.0
        ) as limiter:
            leases = [await limiter.acquire() for _ in range(2)]
            reached, gate, _ = _gate(limiter, "release", leases[0].token)
            first = asyncio.ensure_future(limiter.release(leases[0]))
            await asyncio.wait_for(reached.wait(), 30)
            queued = asyncio.ensure_future(limiter.release(leases[1]))
            await asyncio.sleep(0)  # it queues behind the first
            queued.cancel()
            first.cancel()  # the request on its way is cancelled too (before it is sent)
            await asyncio.gather(first, queued, return_exceptions=True)
            assert first.cancelled()
            assert queued.cancelled()
            gate.set()

            async def gone() -> bool:
                return int(await raw.zcard(leases_key)) == 0

            # The leases live 60 s: only the dispatcher's give-back can empty the set this soon.
            await _until(gone, "the cancelled releases reach Redis")
            assert limiter.held == 0
    finally:
        await raw.aclose()


async def test_a_give_back_cut_short_by_close_is_sent_at_close(redis_server: RedisServer) -> None:
    """A slot the dispatcher was giving back when the limiter closed is given back by the close,
    not left to lapse."""
    name = _name()
    leases_key = f"nanobanana:{{{name}}}:leases"
    raw = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        limiter = nb.RedisLimiter(
            redis_server.url, name=name, max_concurrency=4, lease_seconds=60.0
        )
        async with limiter:
            lease = await limiter.acquire()
            store = limiter._store
            original = store.run
            sending = asyncio.Event()

            async def run(script: str, args: Any, keys: Any = None) -> Any:
                if script == "release" and args[1] == "":  # a release or the dispatcher's
                    sending.set()
                    await anyio.sleep_forever()
                return await original(script, args, keys)

            store.run = run  # type: ignore[method-assign]
            release = asyncio.ensure_future(limiter.release(lease))
            await asyncio.wait_for(sending.wait(), 30)
            sending.clear()
            release.cancel()  # cancelled on its way: the dispatcher takes the slot over
            await asyncio.gather(release, return_exceptions=True)
            await asyncio.wait_for(sending.wait(), 30)  # the dispatcher's send is under way
        # The close (its own request) carried the slot the dispatcher could not finish.
        assert int(await raw.zcard(leases_key)) == 0
    finally:
        await raw.aclose()
