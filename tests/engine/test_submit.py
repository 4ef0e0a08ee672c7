"""A create is re-sent only when it provably never arrived: no credit is ever spent twice."""

from __future__ import annotations

import socket

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import NO_SLEEP, SPEED, client_for, records, slots, wait_for

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
async def test_thousand_submits_with_dropped_answers() -> None:
    """Of 1,000 submits with 5 % of answers dropped, exactly those are uncertain; none re-sent."""
    async with Emulator(speed=SPEED, credits=None, seed=7) as emu:
        drops = emu.faults.inject(Fault.drop_after(), endpoint="create", rate=0.05)
        outcomes: dict[int, nb.TaskResult | nb.NanoBananaError] = {}
        async with client_for(emu, max_concurrency=64) as client:

            async def run(index: int) -> None:
                try:
                    task = await client.submit(f"banana {index}", model="nano-banana-fast")
                    outcomes[index] = await task.wait()
                except nb.NanoBananaError as exc:
                    outcomes[index] = exc

            async with anyio.create_task_group() as group:
                for index in range(1000):
                    group.start_soon(run, index)
            assert slots(client) == 0
            assert client.in_flight == 0

        uncertain = {i: o for i, o in outcomes.items() if isinstance(o, nb.SubmitUncertainError)}
        succeeded = {i: o for i, o in outcomes.items() if isinstance(o, nb.TaskResult)}
        assert len(outcomes) == 1000
        assert 20 <= drops.fired <= 90  # about 5 %
        assert len(uncertain) == drops.fired
        assert len(succeeded) == 1000 - drops.fired
        assert all(error.request.prompt == f"banana {i}" for i, error in uncertain.items())
        assert emu.ledger.creates_received == 1000
        assert emu.ledger.tasks_created == 1000
        assert len(records(emu, "create")) == 1000
        assert {r.task_id for r in succeeded.values()} <= set(emu.tasks)


async def test_map_returns_uncertain_creates_in_place() -> None:
    """map(return_exceptions=True) puts a SubmitUncertainError in its slot and returns the rest."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        async with client_for(emu, max_concurrency=1) as client:
            results = await client.map(["first", "second", "third"], return_exceptions=True)
            assert isinstance(results[0], nb.SubmitUncertainError)
            assert results[0].request.prompt == "first"
            assert [type(r) for r in results[1:]] == [nb.TaskResult, nb.TaskResult]
        assert emu.ledger.creates_received == 3


async def test_as_completed_yields_uncertain_creates() -> None:
    """as_completed(return_exceptions=True) yields a SubmitUncertainError and keeps going."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        async with client_for(emu, max_concurrency=1) as client:
            seen = [o async for o in client.as_completed(["a", "b", "c"], return_exceptions=True)]
        errors = [o for o in seen if isinstance(o, nb.SubmitUncertainError)]
        assert len(seen) == 3
        assert len(errors) == 1
        assert emu.ledger.creates_received == 3


async def test_connection_refused_create_is_resent() -> None:
    """A create that found nothing listening is re-sent, and becomes exactly one task."""
    port = _free_port()
    first_retry = anyio.Event()
    events: list[nb.events.RetryEvent] = []

    def on_retry(event: nb.events.RetryEvent) -> None:
        events.append(event)
        first_retry.set()

    retry = nb.RetryPolicy(initial_backoff=0.05, jitter=False, on_retry=on_retry)
    async with nb.Client(
        "nb-emulator-key",
        base_url=f"http://127.0.0.1:{port}",
        poll=nb.PollPolicy(speed=SPEED),
        retry=retry,
    ) as client:
        async with anyio.create_task_group() as group:
            results: list[nb.TaskResult] = []

            async def generate() -> None:
                results.append(await client.generate("refused first"))

            group.start_soon(generate)
            await first_retry.wait()
            async with Emulator(speed=SPEED, port=port) as emu:
                await wait_for(lambda: bool(results))
                assert emu.ledger.creates_received == 1
                assert emu.ledger.tasks_created == 1
                assert len(records(emu, "create")) == 1
    assert events[0].endpoint == "create"
    assert isinstance(events[0].cause, nb.TransportError)
    assert results[0].snapshot.status is nb.TaskStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("fault", "times"),
    [
        (Fault.rate_limit(retry_after=None), 1),
        (Fault.rate_limit(retry_after=0.05), 2),
        (Fault.status(503), 2),
    ],
    ids=["429", "429-retry-after", "503"],
)
async def test_create_answered_before_processing_is_resent(fault: Fault, times: int) -> None:
    """A 429 (or, by opt-in, a 503) on create is re-sent and results in exactly one task."""
    async with Emulator(speed=SPEED) as emu:
        handle = emu.faults.inject(fault, endpoint="create", times=times)
        async with client_for(emu, retry=nb.RetryPolicy(sleep=False, resend_on_503=True)) as client:
            result = await client.generate("try again")
        assert handle.fired == times
        assert len(records(emu, "create")) == times + 1
        assert emu.ledger.creates_received == 1
        assert emu.ledger.tasks_created == 1
        assert list(emu.tasks) == [result.task_id]


@pytest.mark.parametrize(
    ("fault", "processed"),
    [
        (Fault.drop_after(), True),
        (Fault.status(500), False),
        (Fault.status(502), False),
        (Fault.html(502), False),
        (Fault.malformed(), False),
    ],
    ids=["drop_after", "500", "502", "html-502", "malformed"],
)
async def test_create_that_may_have_arrived_is_not_resent(fault: Fault, processed: bool) -> None:
    """drop_after, 5xx or a malformed answer on create raise SubmitUncertainError, never re-sent."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(fault, endpoint="create")
        events: list[nb.events.RetryEvent] = []
        async with client_for(emu) as client:
            client.add_retry_listener(events.append)
            request = nb.GenerationRequest(prompt="charged once", model="nano-banana-pro")
            with pytest.raises(nb.SubmitUncertainError) as caught:
                await client.submit(request)
            assert caught.value.request == request
            # Its slot is held on while the generation may run on the server, then comes back.
            assert slots(client) == 1
            assert client.in_flight == 0
            await wait_for(lambda: slots(client) == 0)
            # Counted as spent: it may have been charged.
            assert client.credits.charged == 20
            assert client.credits.reserved == 0
        assert len(records(emu, "create")) == 1
        assert emu.ledger.creates_received == int(processed)
        assert emu.ledger.tasks_created == int(processed)
        assert events == []


async def test_create_timeout_is_uncertain_and_not_resent() -> None:
    """A create whose answer is slower than the request timeout is uncertain, never re-sent."""
    async with Emulator(speed=SPEED) as emu:
        # The answer cannot come before 1 s: the 0.05 s timeout fires first even on a loaded
        # machine, whose scheduling delays are milliseconds, not the 0.95 s between the two.
        slow = emu.faults.inject(Fault.delay(1.0), endpoint="create")
        async with client_for(emu, timeouts=nb.Timeouts(request=0.05)) as client:
            with pytest.raises(nb.SubmitUncertainError):
                await client.submit("slow create")
            await wait_for(lambda: slots(client) == 0)
            # The delayed create reaches processing on the emulator after the client gave up.
            await wait_for(lambda: emu.ledger.creates_received == 1)
        assert slow.fired == 1
        assert len(records(emu, "create")) == 1


@pytest.mark.parametrize(
    "setup",
    ["balance", "code-minus-one"],
)
async def test_insufficient_credits_is_never_retried(setup: str) -> None:
    """A 402 (or a 200 with code -1) on create raises InsufficientCreditsError after one request."""
    async with Emulator(speed=SPEED) as emu:
        if setup == "balance":
            emu.set_balance(0)
        else:
            emu.faults.inject(Fault.insufficient_credits_200(), endpoint="create")
        events: list[nb.events.RetryEvent] = []
        async with client_for(emu, retry=nb.RetryPolicy(sleep=False, on_retry=events.append)) as c:
            with pytest.raises(nb.InsufficientCreditsError):
                await c.submit("no money")
            assert slots(c) == 0
            assert c.credits.charged == 0
            assert c.credits.reserved == 0
        assert len(records(emu, "create")) == 1
        assert emu.ledger.tasks_created == 0
        assert events == []


async def test_bad_request_and_bad_key_on_create_are_not_retried() -> None:
    """A 400 or 401 on create is raised at once, after a single request."""
    async with Emulator(speed=SPEED) as emu:
        emu.faults.inject(Fault.status(400), endpoint="create", times=1)
        async with client_for(emu) as client:
            with pytest.raises(nb.BadRequestError):
                await client.submit("rejected")
        async with nb.Client("not-the-key", base_url=emu.base_url, retry=NO_SLEEP) as stranger:
            with pytest.raises(nb.AuthenticationError):
                await stranger.submit("who are you")
            assert slots(stranger) == 0
        assert len(records(emu, "create")) == 2
        assert emu.ledger.tasks_created == 0
