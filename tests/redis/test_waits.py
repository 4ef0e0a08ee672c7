"""A RedisLimiter wait over 2 s says why at INFO: a grace, a budget's grace, the rate cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import pytest
from _redis_support import RedisServer

import nanobanana_async as nb

pytestmark = pytest.mark.anyio


def _name() -> str:
    return f"waits-{os.urandom(4).hex()}"


async def _told(caplog: pytest.LogCaptureFixture, *words: str) -> logging.LogRecord:
    """The first record holding every one of *words* (waited for; a hang fails the test)."""
    deadline = time.monotonic() + 30
    while True:
        for record in caplog.records:
            if all(word in record.getMessage() for word in words):
                return record
        assert time.monotonic() < deadline, f"never logged: {words}"
        await asyncio.sleep(0.02)


async def _cancel(job: asyncio.Future[object]) -> None:
    """Cancel a wait that was told (it may just have ended: a loaded machine)."""
    job.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await job


async def test_a_slot_waiting_out_a_grace_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A create waiting over 2 s for a slot in the store's grace logs the grace at INFO."""
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    async with nb.RedisLimiter(
        redis_server.url, name=_name(), max_concurrency=1, lease_seconds=8.0, strict=True
    ) as limiter:
        job: asyncio.Future[object] = asyncio.ensure_future(limiter.acquire())
        record = await _told(caplog, "wait for a slot", "grace")
        assert record.levelno == logging.INFO
        await _cancel(job)
        if job.done() and not job.cancelled():
            await limiter.release(job.result())  # type: ignore[arg-type]


async def test_a_reservation_waiting_out_a_grace_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A reservation waiting over 2 s for the budget's grace logs the grace at INFO."""
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    async with nb.RedisLimiter(
        redis_server.url,
        name=_name(),
        max_concurrency=None,
        lease_seconds=8.0,
        max_credits=10,
        strict=True,
    ) as limiter:
        job: asyncio.Future[object] = asyncio.ensure_future(limiter.reserve(1))
        record = await _told(caplog, "reservation of 1 credit", "grace")
        assert record.levelno == logging.INFO
        await _cancel(job)


async def test_a_request_waiting_for_the_rate_cap_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A create waiting over 2 s for a token of the shared rate bucket logs the rate cap at INFO."""
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    async with nb.RedisLimiter(
        redis_server.url,
        name=_name(),
        max_concurrency=None,
        max_requests_per_second=0.4,  # a token every 2.5 s
        lease_seconds=5.0,
    ) as limiter:
        await limiter.ready("create")  # the bucket's one token
        job: asyncio.Future[object] = asyncio.ensure_future(limiter.ready("create"))
        record = await _told(caplog, "wait", "the rate cap")
        assert record.levelno == logging.INFO
        await _cancel(job)
