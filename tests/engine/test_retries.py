"""Retries are observable: RetryPolicy.on_retry, retry listeners and one DEBUG line per retry."""

from __future__ import annotations

import logging

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import SPEED, client_for

pytestmark = pytest.mark.anyio


async def test_every_retry_reaches_hooks_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """Each retry is reported once to on_retry, to every listener, and as an INFO log line."""
    caplog.set_level(logging.DEBUG, logger="nanobanana_async")
    async with Emulator(speed=SPEED, api_key="nb-secret-key-123") as emu:
        emu.faults.inject(Fault.status(503), endpoint="create", times=1)
        emu.faults.inject(Fault.status(500), endpoint="result", times=2)
        from_policy: list[nb.events.RetryEvent] = []
        first: list[nb.events.RetryEvent] = []
        second: list[nb.events.RetryEvent] = []
        retry = nb.RetryPolicy(sleep=False, resend_on_503=True, on_retry=from_policy.append)
        async with client_for(emu, retry=retry) as client:
            client.add_retry_listener(first.append)
            client.add_retry_listener(second.append)
            task = await client.submit("observed")
            await task.wait()
    assert from_policy == first == second
    create, *polls = from_policy
    assert (create.endpoint, create.attempt, create.task_id) == ("create", 1, None)
    assert isinstance(create.cause, nb.ServerError)
    assert create.cause.status == 503
    assert [(e.endpoint, e.attempt, e.task_id) for e in polls] == [
        ("result", 1, task.id),
        ("result", 2, task.id),
    ]
    assert all(isinstance(e.cause, nb.ServerError) for e in polls)
    assert all(e.wait == 0.0 for e in from_policy)  # sleep=False
    lines = [r for r in caplog.records if r.getMessage().startswith("retrying ")]
    assert len(lines) == 3
    assert all(r.levelno == logging.INFO and r.name == "nanobanana_async" for r in lines)
    assert "retrying create" in lines[0].getMessage()
    assert all(task.id in r.getMessage() for r in lines[1:])
    assert all("nb-secret-key-123" not in r.getMessage() for r in caplog.records)


async def test_retry_event_wait_follows_the_backoff() -> None:
    """With sleeping backoff, RetryEvent.wait is the capped exponential wait actually slept."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.drop_before(), endpoint="result", times=3)
        events: list[nb.events.RetryEvent] = []
        retry = nb.RetryPolicy(
            initial_backoff=0.01, max_backoff=0.03, jitter=False, on_retry=events.append
        )
        async with client_for(emu, retry=retry) as client:
            await client.generate("backing off")
    assert [e.wait for e in events] == [0.01, 0.02, 0.03]
    assert [e.attempt for e in events] == [1, 2, 3]
    assert all(isinstance(e.cause, nb.TransportError) for e in events)


async def test_rate_limit_retry_event_carries_the_hint() -> None:
    """A retry after a 429 reports a wait of at least the Retry-After hint when sleeping."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.rate_limit(retry_after=0.2), endpoint="result", times=1)
        events: list[nb.events.RetryEvent] = []
        retry = nb.RetryPolicy(initial_backoff=0.01, on_retry=events.append)
        async with client_for(emu, retry=retry) as client:
            await client.generate("told to wait")
    assert len(events) == 1
    assert isinstance(events[0].cause, nb.RateLimitError)
    assert events[0].cause.retry_after == pytest.approx(0.2)
    assert events[0].wait >= 0.2
