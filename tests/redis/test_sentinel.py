"""RedisLimiter through a real Redis Sentinel the test starts (``redis-server --sentinel``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio
import redis.asyncio.sentinel
from _redis_support import RedisServer, free_port

import nanobanana_async as nb

pytestmark = pytest.mark.anyio

SERVICE = "nbmaster"


@pytest.fixture
def sentinel_port(own_redis_server: RedisServer) -> Iterator[int]:
    """A sentinel monitoring the test's own redis-server as the master `SERVICE`; its port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="nb-sentinel-") as directory:
        config = Path(directory) / "sentinel.conf"
        config.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {own_redis_server.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 60000\n"
        )
        process = subprocess.Popen(
            [own_redis_server.executable, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                answer = subprocess.run(
                    [
                        own_redis_server.executable.replace("redis-server", "redis-cli"),
                        "-p", str(port), "sentinel", "get-master-addr-by-name", SERVICE,
                    ],
                    capture_output=True,
                    check=False,
                )  # fmt: skip
                if str(own_redis_server.port).encode() in answer.stdout:
                    break
                assert process.poll() is None, "the sentinel ended"
                assert time.monotonic() < deadline, "the sentinel did not start"
                time.sleep(0.05)
            yield port
        finally:
            process.kill()
            process.wait(timeout=20)


async def test_a_sentinel_master_grants_wakes_and_reserves(
    own_redis_server: RedisServer, sentinel_port: int
) -> None:
    """Through a Sentinel master: a slot, a wake by pub/sub of a waiter, and the budget work."""
    sentinel = redis.asyncio.sentinel.Sentinel([("127.0.0.1", sentinel_port)], socket_timeout=5)
    master = sentinel.master_for(SERVICE)
    raw = redis.asyncio.Redis.from_url(own_redis_server.url, decode_responses=True)
    name = f"sentinel-{os.urandom(4).hex()}"
    channel = f"nanobanana:{{{name}}}:wake"
    try:
        async with (
            nb.RedisLimiter(master, name=name, max_concurrency=1, lease_seconds=60.0) as one,
            nb.RedisLimiter(
                master, name=name, max_concurrency=1, lease_seconds=60.0, max_credits=5
            ) as two,
        ):
            lease = await asyncio.wait_for(one.acquire(), 20)
            # No timed round of its own: only a pub/sub message can wake the waiter before the
            # lease (60 s) lapses.
            assert two._slots is not None
            two._slots.heartbeat = 3600.0
            job = asyncio.ensure_future(two.acquire())
            deadline = time.monotonic() + 30
            while dict(await raw.pubsub_numsub(channel)).get(channel, 0) < 2:
                assert time.monotonic() < deadline, "the limiters never subscribed"
                await asyncio.sleep(0.02)
            while await raw.zcard(f"nanobanana:{{{name}}}:queue") < 1:
                assert time.monotonic() < deadline, "the waiter never queued"
                await asyncio.sleep(0.02)
            assert not job.done()
            await one.release(lease)
            await two.release(await asyncio.wait_for(job, 20))
            await two.ready("create")
            await two.reserve(5)
            with pytest.raises(nb.BudgetExceededError):
                await two.reserve(1)
            await two.settle(5, 0)
        assert await master.ping()  # a client given stays open
    finally:
        await master.aclose()
        for client in sentinel.sentinels:
            await client.aclose()
        await raw.aclose()
