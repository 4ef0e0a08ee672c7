"""Every error class, raised by a real HTTP answer of the emulator."""

from __future__ import annotations

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import dead_port, emulator, make_client

pytestmark = pytest.mark.anyio

ERROR_STYLES = ["error", "message", "code_msg", "success_false", "text", "html"]


def _creates(emu: Emulator) -> int:
    return sum(1 for r in emu.requests if r.endpoint == "create")


def _results(emu: Emulator) -> int:
    return sum(1 for r in emu.requests if r.endpoint == "result")


async def test_bad_request_error_for_a_model_the_server_does_not_know(
    emu: Emulator, client: nb.Client
) -> None:
    """A model name the client passes through but the server rejects raises BadRequestError."""
    with pytest.raises(nb.BadRequestError) as info:
        await client.submit("a banana cat", model="nano-banana-2")
    assert info.value.status == 400
    assert "invalid model" in str(info.value)
    assert "nano-banana-2" in info.value.message
    assert emu.ledger.creates_received == 1
    assert emu.ledger.tasks_created == 0
    assert client.credits.charged == 0
    assert client.credits.reserved == 0
    assert client.limiter.in_flight == 0  # type: ignore[attr-defined]


async def test_authentication_error_for_a_wrong_key(emu: Emulator) -> None:
    """A wrong key raises AuthenticationError on create and on poll, without retries."""
    async with make_client(emu, api_key="not-the-key") as client:
        with pytest.raises(nb.AuthenticationError) as info:
            await client.submit("a banana cat")
        with pytest.raises(nb.AuthenticationError):
            await client.get("3-some-task")
    assert info.value.status == 401
    assert "invalid API key" in str(info.value)
    assert [r.status for r in emu.requests] == [401, 401]
    assert emu.ledger.tasks_created == 0


async def test_insufficient_credits_error_for_a_low_balance() -> None:
    """A balance below the model's cost raises InsufficientCreditsError (HTTP 402)."""
    async with emulator(credits=10) as emu, make_client(emu) as client:
        with pytest.raises(nb.InsufficientCreditsError) as info:
            await client.submit("a banana cat", model="nano-banana")
        cheap = await client.submit("a banana cat", model="nano-banana-fast")
        await cheap
    assert info.value.status == 402
    assert "insufficient credits" in str(info.value)
    assert emu.ledger.balance == 5
    assert client.credits.charged == 5
    assert client.credits.reserved == 0


async def test_insufficient_credits_error_for_code_minus_one_on_http_200(
    emu: Emulator, client: nb.Client
) -> None:
    """HTTP 200 with {"code": -1, "msg": "insufficient credits"} raises InsufficientCreditsError."""
    handle = emu.faults.inject(Fault.insufficient_credits_200(), endpoint="create")
    with pytest.raises(nb.InsufficientCreditsError) as info:
        await client.submit("a banana cat")
    assert handle.fired == 1
    assert info.value.status == 402
    assert info.value.body == {"code": -1, "msg": "insufficient credits"}
    assert "insufficient credits" in str(info.value)
    assert emu.ledger.tasks_created == 0
    assert client.credits.charged == 0
    assert client.credits.reserved == 0


async def test_not_found_error_for_an_unknown_task(emu: Emulator, client: nb.Client) -> None:
    """An unknown task id raises NotFoundError from get() and from an attached task, at once."""
    with pytest.raises(nb.errors.NotFoundError) as info:
        await client.get("3-00000000-0000-4000-8000-000000000000")
    assert info.value.status == 404
    assert "task not found" in str(info.value)
    task = client.task("3-00000000-0000-4000-8000-000000000000")
    with pytest.raises(nb.errors.NotFoundError):
        await task.wait()
    assert task.done()
    assert _results(emu) == 2


async def test_not_found_error_for_a_task_of_another_key(emu: Emulator) -> None:
    """A task created with one key is not found with another key."""
    emu.add_key("second-key")
    async with make_client(emu) as owner, make_client(emu, api_key="second-key") as stranger:
        task = await owner.submit("a banana cat")
        with pytest.raises(nb.errors.NotFoundError):
            await stranger.get(task.id)
        assert (await owner.get(task.id)).id == task.id


async def test_rate_limit_error_on_create_after_retries_run_out(emu: Emulator) -> None:
    """429 on every create raises RateLimitError after the allowed attempts; nothing charged."""
    emu.faults.inject(Fault.rate_limit(retry_after=0), endpoint="create")
    retry = nb.RetryPolicy(attempts=2, sleep=False)
    async with make_client(emu, retry=retry) as client:
        with pytest.raises(nb.RateLimitError) as info:
            await client.submit("a banana cat")
        assert client.credits.reserved == 0
        assert client.limiter.in_flight == 0  # type: ignore[attr-defined]
    assert info.value.status == 429
    assert info.value.retry_after == 0.0
    assert "rate limit exceeded" in str(info.value)
    assert _creates(emu) == 2
    assert all(r.fault == "rate_limit" for r in emu.requests)
    assert emu.ledger.tasks_created == 0


async def test_rate_limit_on_create_is_retried_then_succeeds(emu: Emulator) -> None:
    """A single 429 on create is retried (it never reached processing) and charges once."""
    handle = emu.faults.inject(Fault.rate_limit(retry_after=0), endpoint="create", times=1)
    events: list[nb.events.RetryEvent] = []
    async with make_client(emu) as client:
        client.add_retry_listener(events.append)
        result = await client.generate("a banana cat")
    assert handle.fired == 1
    assert result.images
    assert _creates(emu) == 2
    assert emu.ledger.tasks_created == 1
    assert len(events) == 1
    assert events[0].endpoint == "create"
    assert isinstance(events[0].cause, nb.RateLimitError)


async def test_rate_limit_error_on_poll_after_retries_run_out(emu: Emulator) -> None:
    """429 on every poll of get() raises RateLimitError after the allowed attempts."""
    async with make_client(emu) as owner:
        task_id = (await owner.submit("a banana cat")).id
    emu.faults.inject(Fault.rate_limit(retry_after=0, hint_in_body=True), endpoint="result")
    async with make_client(emu, retry=nb.RetryPolicy(attempts=2, sleep=False)) as client:
        with pytest.raises(nb.RateLimitError) as info:
            await client.get(task_id)
    assert info.value.retry_after == 0.0
    assert _results(emu) == 2


async def test_server_error_on_polls_after_retries(emu: Emulator) -> None:
    """500 on every poll ends the task with ServerError after exactly `attempts` polls."""
    async with make_client(emu, retry=nb.RetryPolicy(attempts=3, sleep=False)) as client:
        task = await client.submit("a banana cat")
        handle = emu.faults.inject(Fault.status(500), endpoint="result")
        with pytest.raises(nb.ServerError) as info:
            await task.wait()
        assert task.done()
        assert client.in_flight == 0
        assert client.limiter.in_flight == 0  # type: ignore[attr-defined]
    assert info.value.status == 500
    assert handle.fired == 3
    assert _results(emu) == 3


async def test_a_poll_server_error_is_retried_transparently(emu: Emulator) -> None:
    """Two 502s and a dropped answer on polls are retried; the task still succeeds."""
    emu.faults.inject(Fault.status(502), endpoint="result", times=2)
    emu.faults.inject(Fault.drop_after(), endpoint="result", times=1)
    async with make_client(emu) as client:
        result = await client.generate("a banana cat")
    assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
    assert emu.faults.fired_total == 3


async def test_a_503_on_create_is_uncertain_by_default(emu: Emulator) -> None:
    """A 503 on a create may come after the charge: SubmitUncertainError, sent once, counted."""
    emu.faults.inject(Fault.status(503), endpoint="create")
    async with make_client(emu, retry=nb.RetryPolicy(attempts=2, sleep=False)) as client:
        with pytest.raises(nb.SubmitUncertainError) as info:
            await client.submit("a banana cat")
        assert client.credits.reserved == 0
        assert client.credits.charged == 15
    assert isinstance(info.value.__cause__, nb.ServerError)
    assert _creates(emu) == 1


async def test_server_error_on_create_503_after_retries(emu: Emulator) -> None:
    """With resend_on_503, a 503 on every create is re-sent, then raises ServerError."""
    emu.faults.inject(Fault.status(503), endpoint="create")
    policy = nb.RetryPolicy(attempts=2, sleep=False, resend_on_503=True)
    async with make_client(emu, retry=policy) as client:
        with pytest.raises(nb.ServerError) as info:
            await client.submit("a banana cat")
        assert client.credits.reserved == 0
    assert info.value.status == 503
    assert _creates(emu) == 2
    assert emu.ledger.tasks_created == 0


async def test_protocol_error_for_a_malformed_poll_answer(emu: Emulator) -> None:
    """A truncated JSON answer to every poll raises ProtocolError carrying an excerpt."""
    async with make_client(emu) as owner:
        task_id = (await owner.submit("a banana cat")).id
    emu.faults.inject(Fault.malformed(), endpoint="result")
    async with make_client(emu, retry=nb.RetryPolicy(attempts=2, sleep=False)) as client:
        with pytest.raises(nb.ProtocolError) as info:
            await client.get(task_id)
    assert info.value.status == 200
    assert info.value.excerpt.startswith('{"data": {"id": "3-2f9c')
    assert info.value.excerpt in str(info.value)


async def test_a_malformed_create_answer_is_uncertain(emu: Emulator, client: nb.Client) -> None:
    """A 200 create answer that cannot be read raises SubmitUncertainError and is not re-sent."""
    emu.faults.inject(Fault.malformed(), endpoint="create", times=1)
    with pytest.raises(nb.SubmitUncertainError) as info:
        await client.submit("a banana cat")
    assert isinstance(info.value.__cause__, nb.ProtocolError)
    assert _creates(emu) == 1


async def test_transport_error_when_nothing_listens() -> None:
    """A port with nothing listening raises TransportError from submit and get."""
    port = dead_port()
    retry = nb.RetryPolicy(attempts=2, sleep=False)
    async with nb.Client(
        "sk-test", base_url=f"http://127.0.0.1:{port}", retry=retry, seed=0
    ) as client:
        with pytest.raises(nb.TransportError) as info:
            await client.submit("a banana cat")
        with pytest.raises(nb.TransportError):
            await client.get("3-some-task")
        assert client.credits.charged == 0
        assert client.credits.reserved == 0
        assert client.limiter.in_flight == 0  # type: ignore[attr-defined]
    assert "create failed" in str(info.value)


async def test_submit_uncertain_error_when_the_create_answer_is_lost(
    emu: Emulator, client: nb.Client
) -> None:
    """A create processed but unanswered raises SubmitUncertainError and is never re-sent."""
    emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
    with pytest.raises(nb.SubmitUncertainError) as info:
        await client.submit("a lost banana", model="nano-banana-pro")
    assert info.value.request.prompt == "a lost banana"
    assert info.value.request.model == "nano-banana-pro"
    assert "not re-sent" in str(info.value)
    assert emu.ledger.creates_received == 1
    assert emu.ledger.tasks_created == 1
    assert _creates(emu) == 1
    # It may have been charged: the client counts it so.
    assert client.credits.charged == 20
    assert client.credits.reserved == 0
    # The generation may be running on the server: its slot is held on for a while.
    assert client.limiter.in_flight == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("style", ERROR_STYLES)
async def test_every_error_style_maps_to_the_typed_error_with_the_message(style: str) -> None:
    """Each error_style of the emulator gives the right typed error with the server's words."""
    async with emulator(error_style=style, credits=10) as emu:
        async with make_client(emu, api_key="wrong-key") as stranger:
            with pytest.raises(nb.AuthenticationError) as auth:
                await stranger.submit("a banana cat")
        async with make_client(emu) as client:
            with pytest.raises(nb.BadRequestError) as bad:
                await client.submit("a banana cat", model="nano-banana-2")
            with pytest.raises(nb.InsufficientCreditsError) as poor:
                await client.submit("a banana cat", model="nano-banana")
            with pytest.raises(nb.errors.NotFoundError) as missing:
                await client.get("3-unknown")
    assert auth.value.status == 401
    assert "invalid API key" in str(auth.value)
    assert bad.value.status == 400
    assert "invalid model" in str(bad.value)
    assert poor.value.status == 402
    assert "insufficient credits" in str(poor.value)
    assert missing.value.status == 404
    assert "task not found" in str(missing.value)


@pytest.mark.parametrize("style", ERROR_STYLES)
async def test_every_error_style_of_a_rate_limit_keeps_the_hint(style: str) -> None:
    """A 429 in each error_style raises RateLimitError with the Retry-After hint."""
    async with emulator(error_style=style) as emu:
        emu.faults.inject(Fault.rate_limit(retry_after=0), endpoint="create")
        retry = nb.RetryPolicy(attempts=1, sleep=False)
        async with make_client(emu, retry=retry) as client:
            with pytest.raises(nb.RateLimitError) as info:
                await client.submit("a banana cat")
    assert info.value.retry_after == 0.0
    assert "rate limit exceeded" in str(info.value)


async def test_the_code_envelope_decodes() -> None:
    """An emulator answering {"code": 0, "msg": "success", "data": ...} works end to end."""
    async with emulator(envelope="code") as emu, make_client(emu) as client:
        task = await client.submit("a banana cat")
        assert task.snapshot.credits_cost == 15
        result = await task
        snapshot = await client.get(task.id)
    assert result.images[0].content == "a banana cat"
    assert snapshot.status is nb.TaskStatus.SUCCEEDED


async def test_the_envelope_fault_decodes(emu: Emulator, client: nb.Client) -> None:
    """The envelope fault on every endpoint changes nothing for the caller."""
    handle = emu.faults.inject(Fault.envelope(), endpoint="any")
    result = await client.generate("a banana cat")
    assert handle.fired >= 2
    assert result.images[0].content == "a banana cat"
    assert result.credits_cost == 15


async def test_a_proxy_html_page_on_create_is_uncertain_or_typed(
    emu: Emulator, client: nb.Client
) -> None:
    """An HTML 502 page from a proxy on create raises SubmitUncertainError with the page title."""
    emu.faults.inject(Fault.html(502), endpoint="create", times=1)
    with pytest.raises(nb.SubmitUncertainError) as info:
        await client.submit("a banana cat")
    assert isinstance(info.value.__cause__, nb.ServerError)
    assert "502 Bad Gateway" in str(info.value)
    assert _creates(emu) == 1
