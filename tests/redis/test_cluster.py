"""RedisLimiter against a real 3-node Redis Cluster the test starts (redis-cli --cluster create)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from _redis_support import REQUIRE_ENV, free_port

import nanobanana_async as nb

pytestmark = pytest.mark.anyio


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port < 55000:
            return port


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    """Three cluster-enabled redis-servers joined into one cluster; their ports."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        message = "redis-server and redis-cli are needed for the cluster test"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{message}; {REQUIRE_ENV} is set, so it must not be skipped")
        pytest.skip(message)
    ports = [_cluster_port() for _ in range(3)]
    processes = []
    with tempfile.TemporaryDirectory(prefix="nb-cluster-") as directory:
        try:
            for port in ports:
                node = Path(directory) / str(port)
                node.mkdir()
                processes.append(
                    subprocess.Popen(
                        [
                            server, "--port", str(port), "--bind", "127.0.0.1",
                            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--save", "", "--appendonly", "no", "--dir", str(node),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )  # fmt: skip
            deadline = time.monotonic() + 20
            for port in ports:
                while (
                    subprocess.run(
                        [cli, "-p", str(port), "ping"], capture_output=True, check=False
                    ).stdout.strip()
                    != b"PONG"
                ):
                    assert time.monotonic() < deadline, "a cluster node did not start"
                    time.sleep(0.05)
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, check=True, timeout=60,
            )  # fmt: skip
            for port in ports:
                while (
                    b"cluster_state:ok"
                    not in subprocess.run(
                        [cli, "-p", str(port), "cluster", "info"], capture_output=True, check=False
                    ).stdout
                ):
                    assert time.monotonic() < deadline + 30, "the cluster did not come up"
                    time.sleep(0.05)
            yield ports
        finally:
            for process in processes:
                process.kill()
                process.wait(timeout=20)


async def test_names_on_every_node_of_a_cluster_work(cluster_ports: list[int]) -> None:
    """Twelve names over the 3 nodes share slots, pauses and budgets through a RedisCluster."""
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    try:
        for index in range(12):
            name = f"cluster-{index}"
            async with (
                nb.RedisLimiter(
                    client, name=name, max_concurrency=1, lease_seconds=5.0, max_credits=5
                ) as one,
                nb.RedisLimiter(
                    client, name=name, max_concurrency=1, lease_seconds=5.0, max_credits=5
                ) as two,
            ):
                lease = await asyncio.wait_for(one.acquire(), 20)
                job = asyncio.ensure_future(two.acquire())
                await asyncio.sleep(0.05)
                assert not job.done()
                await one.release(lease)
                await two.release(await asyncio.wait_for(job, 20))
                await one.ready("create")
                await one.reserve(5)
                with pytest.raises(nb.BudgetExceededError):
                    await two.reserve(1)
        nodes = {
            client.get_node_from_key(f"nanobanana:{{cluster-{i}}}:meta").name for i in range(12)
        }
        assert len(nodes) == 3
    finally:
        await client.aclose()


async def test_a_url_of_a_cluster_node_says_to_pass_a_cluster_client(
    cluster_ports: list[int],
) -> None:
    """A URL of one cluster node fails on a name of another node with an error naming the
    cluster and `RedisCluster`, not "cannot reach Redis"."""
    client = redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    try:
        await client.initialize()
        name = next(
            f"elsewhere-{index}"
            for index in range(100)
            if client.get_node_from_key(f"nanobanana:{{elsewhere-{index}}}:meta").port
            != cluster_ports[0]
        )
    finally:
        await client.aclose()
    url = f"redis://127.0.0.1:{cluster_ports[0]}/0"
    async with nb.RedisLimiter(
        url, name=name, max_concurrency=1, lease_seconds=5.0, max_credits=5
    ) as limiter:
        attempts = (limiter.acquire, lambda: limiter.ready("create"), lambda: limiter.reserve(1))
        for attempt in attempts:
            with pytest.raises(nb.errors.LimiterUnavailableError) as caught:
                await asyncio.wait_for(attempt(), 20)
            message = str(caught.value)
            assert "Redis Cluster" in message
            assert "redis.asyncio.RedisCluster" in message
            assert "cannot reach" not in message


class _ClusterWithoutPubSub(redis.asyncio.RedisCluster):
    """An asyncio RedisCluster as redis-py 5 to 7 have it: no pubsub()."""

    @property
    def pubsub(self) -> Any:  # type: ignore[override]
        raise AttributeError("pubsub")


async def test_a_cluster_client_without_pubsub_warns_once_and_polls(
    cluster_ports: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Without pub/sub (redis-py < 8), one WARNING says waiters poll, and a waiter still gets
    the slot freed by another process."""
    caplog.set_level(logging.WARNING, logger="nanobanana_async")
    client = _ClusterWithoutPubSub(host="127.0.0.1", port=cluster_ports[0])
    try:
        async with (
            nb.RedisLimiter(client, name="no-pubsub", max_concurrency=1, lease_seconds=5.0) as one,
            nb.RedisLimiter(client, name="no-pubsub", max_concurrency=1, lease_seconds=5.0) as two,
        ):
            lease = await asyncio.wait_for(one.acquire(), 20)
            job = asyncio.ensure_future(two.acquire())
            deadline = time.monotonic() + 30
            while await client.zcard("nanobanana:{no-pubsub}:queue") < 1:
                assert time.monotonic() < deadline, "the waiter never queued"
                await asyncio.sleep(0.02)
            await one.release(lease)
            await two.release(await asyncio.wait_for(job, 20))
        warned = [r for r in caplog.records if "no pub/sub" in r.getMessage()]
        assert len(warned) == 2  # one per limiter
        assert all(r.levelno == logging.WARNING for r in warned)
        assert "redis-py 8" in warned[0].getMessage()
    finally:
        await client.aclose()
