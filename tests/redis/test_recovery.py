"""RedisLimiter when replies are lost, calls are cancelled, or Redis restarts or is flushed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from _redis_support import RedisServer, warm

import nanobanana_async as nb
from nanobanana_async.redis import _scripts

pytestmark = pytest.mark.anyio


def _name() -> str:
    return f"recovery-{os.urandom(4).hex()}"


def _sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


async def _until(condition: Any, what: str) -> None:
    """Poll *condition* (an async callable) until it holds; a hang fails the test after 30 s."""
    deadline = time.monotonic() + 30
    while not await condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


class ReplyProxy:
    """A TCP proxy to Redis that loses, or holds back, the replies to chosen requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lost = 0
        #: Set when a held reply came back from Redis (the request ran there).
        self.holding = asyncio.Event()
        self._let_go = asyncio.Event()
        self._needle = b""
        self._times = 0
        self._mode = ""
        self._server: asyncio.Server | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        """The URL that reaches Redis through the proxy."""
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def lose(self, needle: bytes, times: int = 1) -> None:
        """Lose the reply to each of the next *times* requests that contain *needle*."""
        self._needle, self._times, self._mode = needle, times, "lose"

    def hold(self, needle: bytes) -> None:
        """Hold back the reply to the next request that contains *needle*, until `let_go()`."""
        self._needle, self._times, self._mode = needle, 1, "hold"

    def let_go(self) -> None:
        """Pass on the reply held back."""
        self._let_go.set()

    async def __aenter__(self) -> ReplyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [client_w, server_w]
        state = {"mode": ""}
        for job in (
            self._requests(client_r, server_w, state),
            self._replies(server_r, client_w, server_w, state),
        ):
            task = asyncio.ensure_future(job)
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict[str, str]
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self._times > 0 and self._needle in data:
                    self._times -= 1
                    state["mode"] = self._mode
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _replies(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        state: dict[str, str],
    ) -> None:
        try:
            while data := await reader.read(65536):
                if state["mode"] == "lose":
                    self.lost += 1
                    writer.transport.abort()
                    return
                if state["mode"] == "hold":
                    state["mode"] = ""
                    self.holding.set()
                    await self._let_go.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            upstream.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis client of the shared server, to look at what the limiters stored."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _credits(raw: redis.asyncio.Redis, name: str) -> int:
    """Credits committed in the store: charged, plus every process's reservations."""
    charged = int(await raw.hget(f"nanobanana:{{{name}}}:meta", "credits") or 0)
    reserved = await raw.hvals(f"nanobanana:{{{name}}}:resv")
    return charged + sum(int(value) for value in reserved)


async def test_a_settle_whose_reply_is_lost_counts_once(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """A settle the client runs again after losing its reply gives the credits back once only."""
    name = _name()
    await warm(redis_server.url, name)
    await raw.script_load(_scripts.CREDITS)
    async with ReplyProxy(redis_server.port) as proxy:
        async with nb.RedisLimiter(
            proxy.url, name=name, max_concurrency=None, max_credits=10, lease_seconds=2.0
        ) as limiter:
            await limiter.reserve(10)
            proxy.lose(_sha(_scripts.CREDITS))
            await limiter.settle(10, 0)  # never sent
            assert proxy.lost == 1
            assert await _credits(raw, name) == 0
            await limiter.reserve(10)
            with pytest.raises(nb.BudgetExceededError):
                await limiter.reserve(1)


async def test_a_reservation_whose_reply_is_lost_counts_once(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """A reservation run again after a lost reply succeeds and is counted once."""
    name = _name()
    await warm(redis_server.url, name)
    await raw.script_load(_scripts.CREDITS)
    async with ReplyProxy(redis_server.port) as proxy:
        async with nb.RedisLimiter(
            proxy.url, name=name, max_concurrency=None, max_credits=10, lease_seconds=2.0
        ) as limiter:
            await limiter.ready("poll")  # learn the epoch: the next reply is the reservation's
            proxy.lose(_sha(_scripts.CREDITS))
            await limiter.reserve(6)
            assert proxy.lost == 1
            assert await _credits(raw, name) == 6
            await limiter.reserve(4)


async def test_a_reservation_that_never_got_its_reply_is_given_back(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """A reservation whose every reply was lost fails as unavailable and leaves nothing counted."""
    name = _name()
    await warm(redis_server.url, name)
    await raw.script_load(_scripts.CREDITS)
    async with ReplyProxy(redis_server.port) as proxy:
        limiter = nb.RedisLimiter(
            proxy.url, name=name, max_concurrency=None, max_credits=10, lease_seconds=2.0
        )
        async with limiter:
            await limiter.ready("poll")
            proxy.lose(_sha(_scripts.CREDITS), times=10)
            with pytest.raises(nb.errors.LimiterUnavailableError):
                await limiter.reserve(10)
            assert proxy.lost >= 1
            proxy.lose(b"", times=0)
        # aclose() waited for the give-back.
        assert await _credits(raw, name) == 0


async def test_a_reservation_cancelled_while_its_reply_is_in_flight_is_given_back(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """Cancelling reserve() after Redis counted its credits, before the reply, gives them back."""
    name = _name()
    await warm(redis_server.url, name)
    await raw.script_load(_scripts.CREDITS)
    async with ReplyProxy(redis_server.port) as proxy:
        limiter = nb.RedisLimiter(
            proxy.url, name=name, max_concurrency=None, max_credits=10, lease_seconds=2.0
        )
        async with limiter:
            await limiter.ready("poll")
            proxy.hold(_sha(_scripts.CREDITS))
            job = asyncio.ensure_future(limiter.reserve(10))
            await asyncio.wait_for(proxy.holding.wait(), 30)
            assert await _credits(raw, name) == 10
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
        # aclose() waited for the give-back.
        assert await _credits(raw, name) == 0


async def test_a_reservation_landing_in_a_store_lost_meanwhile_counts_in_the_new_one(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """A reservation that ran in a store lost before its reply came is counted in the new store."""
    name = _name()
    await warm(redis_server.url, name)
    await raw.script_load(_scripts.CREDITS)
    async with ReplyProxy(redis_server.port) as proxy:
        async with nb.RedisLimiter(
            proxy.url, name=name, max_concurrency=None, max_credits=10, lease_seconds=2.0
        ) as limiter:
            await limiter.ready("poll")
            proxy.hold(_sha(_scripts.CREDITS))
            job = asyncio.ensure_future(limiter.reserve(10))
            await asyncio.wait_for(proxy.holding.wait(), 30)
            # The store is lost (as by FLUSHDB) and the process re-asserts into a new one...
            await raw.delete(*await raw.keys(f"nanobanana:{{{name}}}:*"))
            await limiter.ready("create")
            assert await _credits(raw, name) == 0
            # ... before the reservation's reply (from the old store) comes.
            proxy.let_go()
            await asyncio.wait_for(job, 30)

            async def carried() -> bool:
                return await _credits(raw, name) == 10

            # Counted in the new store (aclose() gives unsettled reservations back, so look now).
            await _until(carried, "the reservation carried over to the new store")


async def test_an_acquire_whose_reply_is_lost_still_gets_its_slot(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """An acquire run again after its granting reply was lost gets the slot it was granted."""
    name = _name()
    await warm(redis_server.url, name)
    await raw.script_load(_scripts.ACQUIRE)
    # A long lease: a slot granted unseen would block the only slot for two minutes.
    async with ReplyProxy(redis_server.port) as proxy:
        async with nb.RedisLimiter(
            proxy.url, name=name, max_concurrency=1, lease_seconds=120.0
        ) as limiter:
            await limiter.ready("poll")
            proxy.lose(_sha(_scripts.ACQUIRE))
            lease = await asyncio.wait_for(limiter.acquire(), 30)
            assert proxy.lost == 1
            assert await raw.zrange(f"nanobanana:{{{name}}}:leases", 0, -1) == [lease.token]
            assert await raw.zcard(f"nanobanana:{{{name}}}:queue") == 0
            await limiter.release(lease)


async def test_a_re_assertion_whose_reply_is_lost_counts_once(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    """After the meta key is lost, a re-assertion run again after a lost reply counts once."""
    name = _name()
    await warm(redis_server.url, name)
    await raw.script_load(_scripts.REASSERT)
    async with ReplyProxy(redis_server.port) as proxy:
        async with nb.RedisLimiter(
            proxy.url, name=name, max_concurrency=None, max_credits=10, lease_seconds=1.5
        ) as limiter:
            await limiter.reserve(4)
            await limiter.settle(4, 4)
            proxy.lose(_sha(_scripts.REASSERT))
            await raw.delete(f"nanobanana:{{{name}}}:meta")  # evicted, say

            async def reasserted() -> bool:
                return proxy.lost == 1 and await _credits(raw, name) > 0

            await _until(reasserted, "the credits re-asserted through a lost reply")
            with pytest.raises(nb.BudgetExceededError) as caught:
                await limiter.reserve(7)
            assert caught.value.spent == 4
            await limiter.reserve(6)


async def test_a_restart_keeps_the_credits_of_a_process_holding_no_slot(
    own_redis_server: RedisServer,
) -> None:
    """After Redis restarts empty, credits spent by a live process without slots still count."""
    name = _name()
    url = own_redis_server.url
    await warm(url, name)
    async with (
        nb.RedisLimiter(url, name=name, max_concurrency=1, max_credits=10, lease_seconds=1.5) as a,
        nb.RedisLimiter(url, name=name, max_concurrency=1, max_credits=10, lease_seconds=1.5) as b,
    ):
        await a.reserve(10)
        await a.settle(10, 10)  # spent: the task is done, no slot held
        with pytest.raises(nb.BudgetExceededError):
            await b.reserve(5)
        own_redis_server.restart()
        with pytest.raises(nb.BudgetExceededError) as caught:
            await asyncio.wait_for(b.reserve(10), 30)
        assert (caught.value.spent, caught.value.budget) == (10, 10)


async def test_a_flush_keeps_the_cap_in_strict_mode(own_redis_server: RedisServer) -> None:
    """In strict mode, after a FLUSHDB new slots wait for the old holders, never over the cap."""
    name = _name()
    leases_key = f"nanobanana:{{{name}}}:leases"
    url = own_redis_server.url
    raw = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:

        async def up_a_while() -> bool:
            return int((await raw.info("server"))["uptime_in_seconds"]) >= 1

        # The server has been up for longer than a lease: its start is no grace any more.
        await _until(up_a_while, "the server up for 1 s")
        await warm(url, name)
        async with (
            nb.RedisLimiter(
                url, name=name, max_concurrency=2, lease_seconds=1.0, strict=True
            ) as holder,
            nb.RedisLimiter(
                url, name=name, max_concurrency=2, lease_seconds=1.0, strict=True
            ) as other,
        ):
            held = [await holder.acquire(), await holder.acquire()]
            await raw.flushdb()
            job = asyncio.ensure_future(other.acquire())

            async def reasserted() -> bool:
                return set(await raw.zrange(leases_key, 0, -1)) == {lease.token for lease in held}

            await _until(reasserted, "the holder's two slots back in Redis")
            # Two lease times: past the grace, a slot handed out too soon would show by now.
            await asyncio.sleep(2.0)
            assert not job.done()
            await holder.release(held[0])
            lease = await asyncio.wait_for(job, 30)
            await other.release(lease)
            await holder.release(held[1])
    finally:
        await raw.aclose()
