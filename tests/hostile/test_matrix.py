"""The fault matrix: each misbehaviour of a hostile server has a documented, typed outcome.

Every case also holds: no create is charged twice (the server's own ledger), nothing outlives
the configured timeouts, and no form of the key shows in any error or anything it chains.
"""

from __future__ import annotations

import logging

import anyio
import pytest

import nanobanana_async as nb

from ._helpers import (
    CASE_BOUND,
    REQUEST_TIMEOUT,
    assert_charged_at_most_once,
    assert_no_key,
    hostile_client,
    texts_of,
)
from ._server import HOSTILE_KEY, HostileServer, hostile_server

pytestmark = pytest.mark.anyio

#: A create fault, the error `submit()` raises (None: a task), and what the server charged.
CREATE_CASES: list[tuple[str, type[BaseException] | None, int]] = [
    ("drop-after", nb.SubmitUncertainError, 1),
    ("drop-before", nb.SubmitUncertainError, 0),
    ("truncated", nb.SubmitUncertainError, 1),
    ("html200", nb.SubmitUncertainError, 1),
    ("stall", nb.SubmitUncertainError, 1),
    ("endless", nb.SubmitUncertainError, 1),
    ("huge", nb.SubmitUncertainError, 1),
    ("bad-status-line", nb.SubmitUncertainError, 0),
    ("redirect", nb.APIStatusError, 0),
    ("echo-key", nb.AuthenticationError, 0),
    ("wrong-types", None, 1),
    ("429", None, 1),
    ("429-date", None, 1),
    ("429-none", None, 1),
    # A 503 may come after the charge: uncertain by default (RetryPolicy(resend_on_503=True)
    # re-sends it); this server happened to answer before charging.
    ("503", nb.SubmitUncertainError, 0),
]


def _check_error(error: BaseException, events: list[nb.events.RetryEvent]) -> None:
    assert_no_key(HOSTILE_KEY, *texts_of(error))
    for event in events:
        assert_no_key(HOSTILE_KEY, repr(event), *texts_of(event.cause))


@pytest.mark.parametrize(("fault", "error", "charged"), CREATE_CASES)
async def test_a_create_fault_has_its_documented_outcome(
    fault: str, error: type[BaseException] | None, charged: int
) -> None:
    """A create fault raises its typed error (or gives a task), charges once at most, no key."""
    events: list[nb.events.RetryEvent] = []
    async with hostile_server() as server, hostile_client(server) as client:
        client.add_retry_listener(events.append)
        server.create_plan = [fault]
        with anyio.fail_after(CASE_BOUND):
            if error is None:
                task = await client.submit("a banana cat")
                result = await task.wait()
                assert result.images
            else:
                with pytest.raises(error) as raised:
                    await client.submit("a banana cat")
                _check_error(raised.value, events)
    assert server.charged["a banana cat"] == charged
    assert_charged_at_most_once(server)
    for event in events:
        _check_error(event.cause, [])


async def test_a_create_with_wrong_types_is_read_tolerantly() -> None:
    """A create answered with an int id, progress "50" and results null gives a readable task."""
    async with hostile_server() as server, hostile_client(server) as client:
        server.create_plan = ["wrong-types"]
        server.poll_plan = ["wrong-types"] * 3
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            assert task.snapshot.id == task.id == "10001"
            assert task.snapshot.progress == 50
            assert task.snapshot.results == ()
            result = await task.wait()
    assert result.snapshot.status is nb.TaskStatus.SUCCEEDED


async def test_an_oversized_create_answer_is_cut_and_uncertain() -> None:
    """A 100 MB create answer is read no further than max_reply_bytes: uncertain, charged once."""
    async with hostile_server() as server, hostile_client(server) as client:
        server.create_plan = ["huge"]
        with anyio.fail_after(CASE_BOUND), pytest.raises(nb.SubmitUncertainError) as raised:
            await client.submit("a banana cat")
    assert "larger than" in str(raised.value)
    assert server.charged["a banana cat"] == 1


async def test_a_create_answered_as_already_failed_is_a_failed_task() -> None:
    """A create answered `failed` (with an error code) is a failed task, not an error."""
    async with hostile_server() as server, hostile_client(server) as client:
        server.create_plan = ["failed"]
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            assert task.snapshot.status is nb.TaskStatus.FAILED
            with pytest.raises(nb.TaskFailedError) as failed:
                await task.wait()
    assert failed.value.failure_reason == "error"
    assert server.charged["a banana cat"] == 1


async def test_a_create_answered_as_already_failed_is_refunded() -> None:
    """A create answered `failed` counts as charged and refunded in the client's credits."""
    async with hostile_server() as server, hostile_client(server) as client:
        server.create_plan = ["failed"]
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            with pytest.raises(nb.TaskFailedError):
                await task.wait()
        assert client.credits.charged == 15
        assert client.credits.refunded == 15


#: A poll fault plan, and the error `wait()` raises (None: the result).
POLL_CASES: list[tuple[list[str], type[BaseException] | None]] = [
    (["500", "500"], None),
    (["500"] * 10, nb.ServerError),
    (["429", "429-date", "429-none"], None),
    (["truncated", "html200"], None),
    (["wrong-types"] * 5, None),
    (["stall"], None),
    (["endless"], None),
    (["huge"], None),
    (["drop-after"], None),
    (["bad-status-line"], None),
    (["other-id"] * 10, nb.ProtocolError),
    (["echo-key"], nb.AuthenticationError),
]


@pytest.mark.parametrize(
    ("plan", "error"),
    POLL_CASES,
    ids=lambda v: "+".join(v) if isinstance(v, list) else getattr(v, "__name__", "ok"),
)
async def test_a_poll_fault_has_its_documented_outcome(
    plan: list[str], error: type[BaseException] | None
) -> None:
    """A poll fault is retried to the result or ends the task with its typed error; no key leaks."""
    events: list[nb.events.RetryEvent] = []
    async with hostile_server() as server, hostile_client(server) as client:
        client.add_retry_listener(events.append)
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            server.poll_plan = list(plan)
            if error is None:
                result = await task.wait()
                assert result.images
            else:
                with pytest.raises(error) as raised:
                    await task.wait()
                _check_error(raised.value, [])
        assert client.in_flight == 0
    for event in events:
        _check_error(event.cause, [])
    assert server.charged["a banana cat"] == 1


async def test_a_poll_about_another_task_is_a_protocol_error() -> None:
    """A poll answer naming another task id raises ProtocolError, never passes for our task."""
    async with hostile_server() as server, hostile_client(server) as client:
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            server.poll_plan = ["other-id"] * 10
            with pytest.raises(nb.ProtocolError, match="3-somebody-else"):
                await client.get(task.id)


async def test_a_task_flipping_back_to_running_stays_succeeded() -> None:
    """A task seen succeeded stays succeeded for its Task, though the server later says running."""
    async with hostile_server() as server, hostile_client(server) as client:
        server.poll_plan = ["flip"] * 10
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            result = await task.wait()
            again = await client.get(task.id)
            assert again.status is nb.TaskStatus.RUNNING  # a plain poll reports what it is told
            assert await task.wait() == result
        assert task.snapshot.status is nb.TaskStatus.SUCCEEDED
        assert client.in_flight == 0


async def test_a_server_closing_each_connection_after_answering_causes_no_uncertainty() -> None:
    """In strict mode, against a server dropping reused connections, no create is uncertain."""
    strict = nb.Timeouts(connect=10.0, request=REQUEST_TIMEOUT, task=30.0, create_keepalive=0)
    async with hostile_server() as server, hostile_client(server, timeouts=strict) as client:
        server.close_after_answer = True
        with anyio.fail_after(CASE_BOUND):
            for n in range(12):
                task = await client.submit(f"banana {n}")
                await client.get(task.id)
    assert server.seen["create", "dropped-on-reuse"] == 0
    assert sorted(server.charged.values()) == [1] * 12


async def test_creates_reuse_connections_only_when_asked() -> None:
    """Timeouts(create_keepalive=...) lets creates ride pooled connections (and meet that risk)."""
    timeouts = nb.Timeouts(request=2.0, create_keepalive=30.0)
    async with hostile_server() as server, hostile_client(server, timeouts=timeouts) as client:
        server.close_after_answer = True
        with anyio.fail_after(CASE_BOUND):
            await client.submit("first, on a new connection")
            with pytest.raises(nb.SubmitUncertainError):
                await client.submit("second, on the same connection")
    assert server.seen["create", "dropped-on-reuse"] == 1


async def test_an_absurd_retry_after_does_not_pause_the_key_forever() -> None:
    """A 429 with Retry-After of 3000 years raises RateLimitError, and the key works again after."""
    # The pause cap is the retry deadline (1 s): the hint fails the create at once.
    retry = nb.RetryPolicy(attempts=2, initial_backoff=0.01, max_backoff=0.05, deadline=1.0)
    async with hostile_server() as server, hostile_client(server, retry=retry) as client:
        server.create_plan = ["429-absurd"]
        with anyio.fail_after(8):
            with pytest.raises(nb.RateLimitError) as info:
                await client.submit("a banana cat")
            assert info.value.retry_after == 99999999999
            task = await client.submit("a banana cat")
            await task.wait()
    assert server.charged["a banana cat"] == 1


async def test_a_session_of_every_fault_leaves_nothing_behind(tmp_path: object) -> None:
    """After a session through many faults, the client tracks nothing and holds no slot."""
    server: HostileServer
    async with hostile_server() as server:
        client = hostile_client(server, max_concurrency=2)
        async with client:
            server.create_plan = ["drop-after", "truncated", "429", "ok", "stall", "ok"]
            server.poll_plan = ["500", "truncated", "stall", "endless", "ok"]
            outcomes = []
            with anyio.fail_after(CASE_BOUND):
                for n in range(5):
                    try:
                        task = await client.submit(f"banana {n}")
                        outcomes.append(await task.wait())
                    except nb.NanoBananaError as exc:
                        outcomes.append(exc)
            assert client.in_flight == 0
        assert client.limiter.max_concurrency == 2
    assert_charged_at_most_once(server)
    assert len(outcomes) == 5


@pytest.mark.parametrize("fault", ["endless", "huge", "gzip-bomb"])
async def test_an_oversized_poll_answer_is_cut_and_the_poll_retried(fault: str) -> None:
    """A poll answered without end is cut at max_reply_bytes, its connection dropped, retried."""
    events: list[nb.events.RetryEvent] = []
    async with hostile_server() as server, hostile_client(server) as client:
        client.add_retry_listener(events.append)
        with anyio.fail_after(CASE_BOUND):
            task = await client.submit("a banana cat")
            server.poll_plan = [fault]
            await task.wait()
    (event,) = events
    assert isinstance(event.cause, nb.ProtocolError)
    assert f"larger than {nb.defaults.DEFAULT_MAX_REPLY_BYTES} bytes" in str(event.cause)


async def test_max_reply_bytes_is_configurable() -> None:
    """A client with a small max_reply_bytes refuses a normal answer above it with ProtocolError."""
    async with hostile_server() as server, hostile_client(server, max_reply_bytes=64) as client:
        with anyio.fail_after(CASE_BOUND), pytest.raises(nb.SubmitUncertainError) as created:
            await client.submit("a banana cat")
    assert "larger than 64 bytes" in str(created.value)
    with pytest.raises(nb.InvalidRequestError, match="max_reply_bytes"):
        nb.Client("k", base_url="http://127.0.0.1:9", max_reply_bytes=0)


async def test_no_form_of_the_key_reaches_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    """With servers echoing the key escaped and in status lines, DEBUG logs never show it."""
    caplog.set_level(logging.DEBUG, logger="nanobanana_async")
    async with hostile_server() as server, hostile_client(server) as client:
        with anyio.fail_after(CASE_BOUND):
            server.create_plan = ["bad-status-line", "echo-key"]
            for _ in range(2):
                with pytest.raises(nb.NanoBananaError):
                    await client.submit("a banana cat")
            task = await client.submit("a banana cat")
            server.poll_plan = ["bad-status-line", "bad-status-line", "ok", "echo-key"]
            await task.wait()
            with pytest.raises(nb.AuthenticationError):
                await client.get(task.id)
    records = [r for r in caplog.records if r.name.startswith("nanobanana_async")]
    assert any("retrying" in r.getMessage() for r in records)
    assert_no_key(HOSTILE_KEY, caplog.text, *(repr(r.args) for r in records))
