"""Fault injection: every fault kind, its effect on the ledger and its `fired` count."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import aiohttp
import anyio
import pytest

from nanobanana_async.testing import Emulator, Fault

from ._helpers import CREATE, auth, create, poll, text_to_image, wait_for, wait_until_done

pytestmark = pytest.mark.anyio

DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as client:
        yield client


async def test_rate_limit_with_seconds(session: aiohttp.ClientSession) -> None:
    """A 429 fault answers Retry-After in seconds before processing, then stops after `times`."""
    async with Emulator() as emu:
        handle = emu.faults.inject(Fault.rate_limit(retry_after=2.0), endpoint="create", times=1)
        async with session.post(
            emu.base_url + CREATE, json=text_to_image(), headers=auth(emu.api_key)
        ) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "2"
            assert "rate limit" in (await response.json())["error"]
        status, _ = await create(session, emu, json_body=text_to_image())
        assert status == 200
        assert (handle.fired, handle.active, emu.faults.fired_total) == (1, False, 1)
        assert (emu.ledger.creates_received, emu.ledger.tasks_created) == (1, 1)
        assert [r.fault for r in emu.requests] == ["rate_limit", None]


async def test_rate_limit_with_http_date_and_body_hint(session: aiohttp.ClientSession) -> None:
    """http_date sends Retry-After as an HTTP date no sooner than the wait; the body has a hint."""
    async with Emulator() as emu:
        emu.faults.inject(
            Fault.rate_limit(retry_after=3.0, http_date=True, hint_in_body=True), times=1
        )
        before = datetime.now(timezone.utc).replace(microsecond=0)
        async with session.post(
            emu.base_url + CREATE, json=text_to_image(), headers=auth(emu.api_key)
        ) as response:
            assert response.status == 429
            when = email.utils.parsedate_to_datetime(response.headers["Retry-After"])
            body = await response.json()
        assert 3 <= (when - before).total_seconds() <= 5
        assert body == {"error": "rate limit exceeded", "retry_after": 3}


async def test_rate_limit_without_header_and_fractional_seconds(
    session: aiohttp.ClientSession,
) -> None:
    """retry_after=None sends no Retry-After; a fractional wait is sent as a decimal."""
    async with Emulator() as emu:
        emu.faults.inject(Fault.rate_limit(retry_after=None), endpoint="result", times=1)
        emu.faults.inject(Fault.status(503, retry_after=1.5), endpoint="result", times=1)
        for expected in (None, "1.5"):
            async with session.post(
                emu.base_url + "/api/v1/image/nano-banana/result",
                json={"taskId": "3-x"},
                headers=auth(emu.api_key),
            ) as response:
                assert response.headers.get("Retry-After") == expected
        assert emu.ledger.polls_received == 0


async def test_status_fault_answers_5xx_without_processing(session: aiohttp.ClientSession) -> None:
    """A status fault answers its code in the error style and charges nothing."""
    async with Emulator(error_style="code_msg") as emu:
        handle = emu.faults.inject(Fault.status(503), endpoint="create")
        for _ in range(3):
            status, body = await create(session, emu, json_body=text_to_image())
            assert (status, body) == (503, {"code": 503, "msg": "service unavailable"})
        assert handle.fired == 3
        assert (emu.ledger.creates_received, emu.ledger.credits_charged, emu.tasks) == (0, 0, {})


async def test_drop_before_leaves_no_charge(session: aiohttp.ClientSession) -> None:
    """drop_before disconnects the client and nothing is charged nor created."""
    async with Emulator(credits=50) as emu:
        handle = emu.faults.inject(Fault.drop_before(), endpoint="create", times=1)
        with pytest.raises(DISCONNECTED):
            await create(session, emu, json_body=text_to_image())
        assert handle.fired == 1
        assert (emu.ledger.balance, emu.ledger.creates_received, len(emu.tasks)) == (50, 0, 0)
        record = emu.requests[-1]
        assert (record.status, record.fault, record.task_id) == (None, "drop_before", None)


async def test_drop_after_charges_and_creates_the_task(session: aiohttp.ClientSession) -> None:
    """drop_after on create disconnects the client yet the task exists and is charged."""
    async with Emulator(credits=50, speed=1000.0, duration=5.0) as emu:
        handle = emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        with pytest.raises(DISCONNECTED):
            await create(session, emu, json_body=text_to_image())
        assert handle.fired == 1
        assert (emu.ledger.balance, emu.ledger.tasks_created) == (35, 1)
        record = emu.requests[-1]
        assert (record.status, record.fault) == (None, "drop_after")
        assert record.task_id in emu.tasks
        final = (await wait_until_done(session, emu, record.task_id))[-1]
        assert final["status"] == "succeeded"


async def test_drop_after_on_result_still_counts_the_poll(session: aiohttp.ClientSession) -> None:
    """drop_after on result processes the poll, then disconnects."""
    async with Emulator() as emu:
        _, body = await create(session, emu, json_body=text_to_image())
        handle = emu.faults.inject(Fault.drop_after(), endpoint="result")
        with pytest.raises(DISCONNECTED):
            await poll(session, emu, body["data"]["id"])
        assert (handle.fired, emu.ledger.polls_received) == (1, 1)


async def test_delay_answers_late_but_normally(session: aiohttp.ClientSession) -> None:
    """A delay fault waits the given real seconds, then answers normally."""
    async with Emulator() as emu:
        handle = emu.faults.inject(Fault.delay(0.05), endpoint="create")
        started = time.monotonic()
        status, _ = await create(session, emu, json_body=text_to_image())
        assert time.monotonic() - started >= 0.05
        assert (status, handle.fired, emu.ledger.tasks_created) == (200, 1, 1)
        assert emu.requests[-1].fault == "delay"


async def test_a_delayed_create_is_charged_even_if_the_client_gives_up() -> None:
    """A create slower than the client's patience is still processed and charged, as upstream."""
    async with Emulator() as emu:
        # The answer cannot come before 1 s: the 0.05 s timeout fires first, even on a busy machine.
        handle = emu.faults.inject(Fault.delay(1.0), endpoint="create")
        timeout = aiohttp.ClientTimeout(total=0.05)
        async with aiohttp.ClientSession(timeout=timeout) as impatient:
            with pytest.raises(asyncio.TimeoutError):  # TimeoutError from 3.11 on
                await create(impatient, emu, json_body=text_to_image())
        await wait_for(lambda: emu.ledger.tasks_created == 1)
        assert handle.fired == 1
        assert emu.ledger.credits_charged == 15


async def test_hang_and_delay_end_promptly_at_aclose() -> None:
    """Hung and long-delayed requests never answer, and aclose drops them promptly."""
    emu = Emulator()
    await emu.start()
    hang = emu.faults.inject(Fault.hang(), endpoint="create")
    delay = emu.faults.inject(Fault.delay(60.0), endpoint="result")
    outcomes: list[str] = []

    async def call(session: aiohttp.ClientSession, endpoint: str) -> None:
        if endpoint == "create":
            request = create(session, emu, json_body=text_to_image())
        else:
            request = poll(session, emu, "3-x")
        with pytest.raises(DISCONNECTED):
            await request
        outcomes.append(endpoint)

    async with aiohttp.ClientSession() as session:
        async with anyio.create_task_group() as group:
            group.start_soon(call, session, "create")
            group.start_soon(call, session, "result")
            await wait_for(lambda: hang.fired == 1 and delay.fired == 1)
            assert emu.requests[0].fault == "hang"
            assert emu.requests[0].status is None
            started = time.monotonic()
            with anyio.fail_after(5):
                await emu.aclose()
            assert time.monotonic() - started < 2.0
    assert sorted(outcomes) == ["create", "result"]
    assert emu.ledger.creates_received == 0
    assert emu.ledger.polls_received == 0


async def test_html_fault_on_any_endpoint(session: aiohttp.ClientSession) -> None:
    """An html fault on `any` answers a proxy page on create, result and file alike."""
    async with Emulator() as emu:
        handle = emu.faults.inject(Fault.html(), endpoint="any", times=3)
        status, body = await create(session, emu, json_body=text_to_image())
        assert status == 502
        assert "<html>" in body
        assert "502 Bad Gateway" in body
        status, body = await poll(session, emu, "3-x")
        assert status == 502
        async with session.get(emu.base_url + "/files/3-x/0.png") as response:
            assert response.status == 502
            assert response.content_type == "text/html"
        assert handle.fired == 3
        assert (emu.ledger.creates_received, emu.ledger.polls_received) == (0, 0)


async def test_malformed_fault_is_not_json_and_not_processed(
    session: aiohttp.ClientSession,
) -> None:
    """A malformed fault answers a truncated JSON body and charges nothing."""
    async with Emulator() as emu:
        handle = emu.faults.inject(Fault.malformed(), endpoint="create")
        async with session.post(
            emu.base_url + CREATE, json=text_to_image(), headers=auth(emu.api_key)
        ) as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            text = await response.text()
        with pytest.raises(ValueError):  # noqa: PT011 - json's own error
            json.loads(text)
        assert (handle.fired, emu.ledger.creates_received, emu.ledger.credits_charged) == (1, 0, 0)


async def test_envelope_fault_wraps_one_success(session: aiohttp.ClientSession) -> None:
    """An envelope fault wraps a processed success in {code: 0, msg: success, data}."""
    async with Emulator() as emu:
        handle = emu.faults.inject(Fault.envelope(), endpoint="create", times=1)
        status, wrapped = await create(session, emu, json_body=text_to_image())
        status2, plain = await create(session, emu, json_body=text_to_image())
        assert (status, status2) == (200, 200)
        assert (wrapped["code"], wrapped["msg"]) == (0, "success")
        assert wrapped["data"]["credits_cost"] == 15
        assert set(plain) == {"data"}
        assert (handle.fired, emu.ledger.tasks_created) == (1, 2)


async def test_insufficient_credits_200_fault(session: aiohttp.ClientSession) -> None:
    """insufficient_credits_200 answers HTTP 200 with code -1 and charges nothing."""
    async with Emulator(credits=100) as emu:
        handle = emu.faults.inject(Fault.insufficient_credits_200(), endpoint="create")
        status, body = await create(session, emu, json_body=text_to_image())
        assert (status, body) == (200, {"code": -1, "msg": "insufficient credits"})
        assert (handle.fired, emu.ledger.balance, emu.ledger.creates_received) == (1, 100, 0)


async def test_rated_fault_fires_a_seeded_fraction(session: aiohttp.ClientSession) -> None:
    """A fault with rate= hits a fraction of requests, the same ones for the same seed."""
    runs = []
    for _ in range(2):
        async with Emulator(seed=11) as emu:
            handle = emu.faults.inject(Fault.status(500), endpoint="result", rate=0.5)
            statuses = [(await poll(session, emu, "3-x"))[0] for _ in range(40)]
            assert set(statuses) <= {404, 500}
            assert handle.fired == statuses.count(500)
            runs.append(statuses)
    assert runs[0] == runs[1]
    assert 8 <= runs[0].count(500) <= 32


async def test_remove_and_clear(session: aiohttp.ClientSession) -> None:
    """Removed or cleared injections stop firing and keep their counts."""
    async with Emulator() as emu:
        first = emu.faults.inject(Fault.status(500), endpoint="result")
        assert (await poll(session, emu, "3-x"))[0] == 500
        first.remove()
        first.remove()
        assert not first.active
        assert (await poll(session, emu, "3-x"))[0] == 404
        emu.faults.inject(Fault.status(502))
        emu.faults.inject(Fault.status(503))
        assert (await poll(session, emu, "3-x"))[0] == 502  # earlier injections win
        emu.faults.clear()
        assert (await poll(session, emu, "3-x"))[0] == 404
        assert (first.fired, emu.faults.fired_total) == (1, 2)


def test_fault_arguments_are_validated() -> None:
    """Impossible fault parameters and injections are refused."""
    with pytest.raises(ValueError, match="code"):
        Fault.status(99)
    with pytest.raises(ValueError, match="retry_after"):
        Fault.rate_limit(retry_after=-1.0)
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-0.5)
    emu = Emulator()
    with pytest.raises(ValueError, match="endpoint"):
        emu.faults.inject(Fault.hang(), endpoint="upload")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        emu.faults.inject(Fault.hang(), times=0)
    with pytest.raises(ValueError, match="rate"):
        emu.faults.inject(Fault.hang(), rate=1.5)
    assert Fault.drop_after().name == "drop_after"
