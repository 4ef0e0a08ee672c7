"""Wire decoding: arbitrary answers never crash the decoder; Retry-After and error shapes."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanobanana_async as nb
from nanobanana_async._wire import CappedBody, decode_snapshot, parse_retry_after

NOW = 1_700_000_000.0

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["running", "succeeded", "failed", "SUCCESS", " pending ", "100%", "1e999"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["id", "status", "progress", "results", "url", "content", "error"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)
# Task-shaped objects, so the structuring hooks see every kind of value in every field.
task_objects = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "status": json_values,
        "progress": json_values,
        "results": json_values
        | st.lists(st.fixed_dictionaries({"url": json_values}, optional={"content": json_values})),
        "failure_reason": json_values,
        "error": json_values,
        "credits_cost": json_values,
        "code": json_values,
        "msg": json_values,
        "success": json_values,
        "retry_after": json_values,
        "message": json_values,
    },
)
payloads = json_values | task_objects
statuses = st.sampled_from([200, 201, 204, 400, 401, 402, 403, 404, 408, 429, 500, 502, 503]) | (
    st.integers(min_value=100, max_value=599)
)
task_ids = st.none() | st.text(max_size=10)
retry_afters = st.none() | st.text(max_size=30) | st.sampled_from(["0", "1.5", "-3", "nan"])


def _decode(status: int, body: bytes, task_id: str | None, retry_after: str | None) -> None:
    try:
        snapshot = decode_snapshot(status, body, task_id=task_id, retry_after=retry_after)
    except (nb.ProtocolError, nb.APIStatusError) as exc:
        str(exc)  # the message must be printable too
        return
    assert isinstance(snapshot, nb.TaskSnapshot)
    assert isinstance(snapshot.id, str)
    assert snapshot.id
    assert isinstance(snapshot.status, nb.TaskStatus)
    assert 0 <= snapshot.progress <= 100
    assert all(isinstance(image, nb.GeneratedImage) for image in snapshot.results)
    assert 200 <= status < 300


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=payloads,
    wrap=st.sampled_from(["bare", "data", "code"]),
    status=statuses,
    task_id=task_ids,
    retry_after=retry_afters,
)
def test_any_json_decodes_to_a_snapshot_or_a_typed_error(
    payload: Any, wrap: str, status: int, task_id: str | None, retry_after: str | None
) -> None:
    """Any JSON answer, bare or wrapped, gives a TaskSnapshot or a ProtocolError/APIStatusError."""
    if wrap == "data":
        payload = {"data": payload}
    elif wrap == "code":
        payload = {"code": 0, "msg": "success", "data": payload}
    _decode(status, json.dumps(payload).encode(), task_id, retry_after)


@settings(max_examples=400)
@given(body=st.binary(max_size=200), status=statuses, retry_after=retry_afters)
def test_any_bytes_decode_to_a_snapshot_or_a_typed_error(
    body: bytes, status: int, retry_after: str | None
) -> None:
    """Arbitrary bytes give a TaskSnapshot or a ProtocolError/APIStatusError, nothing else."""
    _decode(status, body, None, retry_after)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000, id="deeply-nested-array"),
        pytest.param(b'{"data":' * 50_000, id="deeply-nested-object"),
        pytest.param(
            b'{"data": {"id": "x", "status": "running", "progress": 1' + b"0" * 400 + b"}}",
            id="huge-progress",
        ),
        pytest.param(
            b'{"data": {"id": "x", "status": "running", "credits_cost": 1' + b"0" * 400 + b"}}",
            id="huge-cost",
        ),
        pytest.param(
            b'{"code": -1, "msg": "slow down", "retry_after": 1' + b"0" * 400 + b"}",
            id="huge-retry-hint",
        ),
        pytest.param(b'{"data": {"id": "x", "status": "running", "progress": NaN}}', id="nan"),
        pytest.param(
            b'{"data": {"id": "x", "status": "running", "progress": "1e999"}}', id="infinite-text"
        ),
        pytest.param(b'\xff\xfe{"data": 1}', id="bad-utf8"),
        pytest.param(b'{"data": {"id": "\xff", "status": "running"}}', id="bad-utf8-inside"),
    ],
)
@pytest.mark.parametrize("status", [200, 429, 500])
def test_hostile_bodies_raise_typed_errors(body: bytes, status: int) -> None:
    """Pathological bodies (deep nesting, huge numbers, bad UTF-8) raise only typed errors."""
    _decode(status, body, None, None)


def test_parse_retry_after_reads_seconds() -> None:
    """Retry-After in seconds is read as a float, negative as zero, junk and non-finite as None."""
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(7) == 7.0
    assert parse_retry_after(2.5) == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after(True) is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("inf") is None
    assert parse_retry_after(float("inf")) is None


def test_parse_retry_after_reads_http_dates() -> None:
    """Retry-After as an HTTP date is the seconds from now; a past date is zero."""
    future = email.utils.formatdate(NOW + 30, usegmt=True)
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after(future, now=lambda: NOW) == pytest.approx(30.0)
    assert parse_retry_after(past, now=lambda: NOW) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: NOW) == 0.0


@pytest.mark.parametrize(
    "value",
    ["soon", "", "   ", "12 seconds", "Wed, 99 Foo 2015 07:28:00 GMT", "1,5", [], {}, object()],
)
def test_parse_retry_after_ignores_garbage(value: Any) -> None:
    """A Retry-After that is neither seconds nor an HTTP date is None."""
    assert parse_retry_after(value, now=lambda: NOW) is None


def test_parse_retry_after_survives_huge_integers() -> None:
    """A huge integer hint (from a JSON body) gives None or a finite wait, never an exception."""
    value = parse_retry_after(10**400)
    assert value is None or value >= 0.0


TASK = {"id": "3-abc", "status": "running", "progress": 7}


def _raises(status: int, body: bytes | str, header: str | None = None) -> nb.NanoBananaError:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(nb.NanoBananaError) as info:
        decode_snapshot(status, raw, retry_after=header)
    return info.value


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (
            400,
            {"error": "missing required parameter: prompt"},
            nb.BadRequestError,
            "missing required parameter: prompt",
        ),
        (401, {"message": "not authenticated"}, nb.AuthenticationError, "not authenticated"),
        (
            402,
            {"code": 402, "msg": "insufficient credits"},
            nb.InsufficientCreditsError,
            "insufficient credits",
        ),
        (
            403,
            {"detail": "forbidden for this key"},
            nb.errors.PermissionDeniedError,
            "forbidden for this key",
        ),
        (
            404,
            {"success": False, "error": {"code": 404, "message": "task not found"}},
            nb.errors.NotFoundError,
            "task not found",
        ),
        (
            500,
            {"code": 500, "message": "Nano Banana API key missing"},
            nb.ServerError,
            "Nano Banana API key missing",
        ),
        (
            200,
            {"code": -1, "msg": "insufficient credits"},
            nb.InsufficientCreditsError,
            "insufficient credits",
        ),
        (
            200,
            {"success": False, "error": {"code": 429, "message": "too many"}},
            nb.RateLimitError,
            "too many",
        ),
        (200, {"code": 401, "msg": "invalid token"}, nb.AuthenticationError, "invalid token"),
        (418, {"error": "teapot"}, nb.APIStatusError, "teapot"),
    ],
)
def test_json_error_shapes_map_to_typed_errors(
    status: int, body: dict[str, Any], error: type[nb.APIStatusError], message: str
) -> None:
    """Each JSON error shape of docs/api.md §3 raises its typed error with the server's message."""
    raised = _raises(status, json.dumps(body))
    assert type(raised) is error
    assert isinstance(raised, nb.APIStatusError)
    assert raised.message == message
    assert message in str(raised)
    assert raised.body == body


def test_a_plain_text_error_keeps_its_text() -> None:
    """A text/plain error body becomes the message of the typed error."""
    raised = _raises(502, "upstream connect error or disconnect/reset before headers")
    assert isinstance(raised, nb.ServerError)
    assert raised.status == 502
    assert "upstream connect error" in str(raised)


def test_an_html_error_page_is_summarised() -> None:
    """An HTML proxy page raises the typed error with its title, not the markup."""
    page = (
        "<html><head><title>504 Gateway Time-out</title></head>"
        "<body><center><h1>504 Gateway Time-out</h1></center><hr><center>nginx</center></body>"
        "</html>"
    )
    raised = _raises(504, page)
    assert isinstance(raised, nb.ServerError)
    assert "504 Gateway Time-out" in str(raised)
    assert "<title>" not in str(raised)


def test_an_empty_error_body_still_says_the_status() -> None:
    """An empty 503 body raises ServerError mentioning HTTP 503."""
    raised = _raises(503, b"")
    assert isinstance(raised, nb.ServerError)
    assert "503" in str(raised)


def test_a_429_carries_retry_after_from_header_or_body() -> None:
    """RateLimitError.retry_after comes from the header, else from the body's hint."""
    from_header = _raises(429, json.dumps({"error": "rate limit exceeded"}), "3")
    from_body = _raises(429, json.dumps({"error": "slow down", "retry_after": 4}))
    nested = _raises(429, json.dumps({"success": False, "error": {"retryAfter": "5"}}))
    none = _raises(429, "Too Many Requests")
    assert isinstance(from_header, nb.RateLimitError)
    assert from_header.retry_after == 3.0
    assert isinstance(from_body, nb.RateLimitError)
    assert from_body.retry_after == 4.0
    assert isinstance(nested, nb.RateLimitError)
    assert nested.retry_after == 5.0
    assert isinstance(none, nb.RateLimitError)
    assert none.retry_after is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"OK",
        b"<html>fine</html>",
        b"[]",
        b'{"data": null}',
        b'{"data": []}',
        b'{"data": {"status": "running"}}',
        b'{"data": {"id": "x", "status": "exploded"}}',
        b'{"data": {"id": "x", "status": "running", "results": "nope"}}',
        b'{"data": {"id": "x", "status": "succeeded", "results": [{"content": "no url"}]}}',
        b'{"data": {"id": "3-2f9c1e0a-6b1d-4c',
    ],
)
def test_unreadable_success_answers_raise_protocol_error(body: bytes) -> None:
    """A 200 answer without a readable task object raises ProtocolError with an excerpt."""
    raised = _raises(200, body)
    assert isinstance(raised, nb.ProtocolError)
    assert raised.status in (200, None)


@pytest.mark.parametrize(
    "body",
    [
        {"data": TASK},
        {"code": 0, "msg": "success", "data": TASK},
        {"code": "0", "data": TASK},
        {"code": 200, "message": "ok", "data": TASK},
        {"success": True, "data": TASK},
        TASK,
    ],
)
def test_success_envelopes_decode(body: dict[str, Any]) -> None:
    """Every success envelope (data, code+msg+data, bare task) decodes to the same snapshot."""
    snapshot = decode_snapshot(200, json.dumps(body).encode())
    assert snapshot == nb.TaskSnapshot(id="3-abc", status=nb.TaskStatus.RUNNING, progress=7)


def test_tolerant_field_values_decode() -> None:
    """Status aliases, string progress, string costs and string results are read tolerantly."""
    body = {
        "data": {
            "id": 12345,
            "status": "SUCCESS",
            "progress": "87%",
            "results": ["https://x/a.png", {"url": "https://x/b.png", "content": {"k": 1}}],
            "failure_reason": None,
            "error": {"code": 1, "message": "m"},
            "credits_cost": "20",
        }
    }
    snapshot = decode_snapshot(200, json.dumps(body).encode())
    assert snapshot.id == "12345"
    assert snapshot.status is nb.TaskStatus.SUCCEEDED
    assert snapshot.progress == 100
    assert [image.url for image in snapshot.results] == ["https://x/a.png", "https://x/b.png"]
    assert snapshot.results[1].content == '{"k":1}'
    assert snapshot.credits_cost == 20


def test_a_missing_id_is_filled_from_the_polled_task_id() -> None:
    """A result answer without an id takes the id that was polled."""
    snapshot = decode_snapshot(
        200, b'{"data": {"status": "failed", "failure_reason": "error"}}', task_id="3-abc"
    )
    assert snapshot.id == "3-abc"
    assert snapshot.status is nb.TaskStatus.FAILED
    assert snapshot.failure_reason == "error"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"code": -1, "msg": "failed to generate image"}, nb.BadRequestError),
        ({"success": False, "message": "prompt exceeds the token limit"}, nb.BadRequestError),
        ({"code": 10001, "msg": "moderation rejected the prompt"}, nb.BadRequestError),
        ({"code": -1, "msg": "Rate limit reached, slow down"}, nb.RateLimitError),
        ({"code": -1, "msg": "Insufficient credits: top up"}, nb.InsufficientCreditsError),
        ({"code": -1, "msg": "invalid API key"}, nb.AuthenticationError),
        ({"code": -1, "msg": "task not found"}, nb.errors.NotFoundError),
        ({"code": 500, "msg": "insufficient credits upstream"}, nb.ServerError),
    ],
)
def test_a_message_refines_a_generic_code_only_by_an_unambiguous_phrase(
    body: dict[str, Any], error: type[nb.APIStatusError]
) -> None:
    """A loose word ("rate" in "generate", "token") never picks the error type; a phrase may."""
    assert type(_raises(200, json.dumps(body))) is error


def test_a_create_answered_already_failed_decodes_as_a_failed_task() -> None:
    """An error envelope holding a failed task object decodes to that failed task, not an error."""
    body = {
        "code": 500,
        "msg": "failed to generate image",
        "data": {"id": "3-abc", "status": "failed", "failure_reason": "error", "results": []},
    }
    snapshot = decode_snapshot(200, json.dumps(body).encode())
    assert snapshot.status is nb.TaskStatus.FAILED
    assert snapshot.id == "3-abc"
    assert snapshot.failure_reason == "error"


def test_a_poll_answer_about_another_task_is_a_protocol_error() -> None:
    """A poll answer whose id differs from the polled task's raises ProtocolError."""
    body = json.dumps({"data": {**TASK, "id": "3-other"}}).encode()
    with pytest.raises(nb.ProtocolError, match="3-other"):
        decode_snapshot(200, body, task_id="3-abc")
    assert decode_snapshot(200, body, task_id="3-other").id == "3-other"


@pytest.mark.parametrize("task_id", ["../x", "a/b", "a\\b", "..", " . ", "a\tb", "x" * 600])
def test_a_created_task_id_unfit_for_file_names_is_a_protocol_error(task_id: str) -> None:
    """A create answer's id holding a path separator, control characters or only dots is refused."""
    body = json.dumps({"data": {**TASK, "id": task_id}}).encode()
    with pytest.raises(nb.ProtocolError, match="unusable task id"):
        decode_snapshot(200, body)


def test_an_answer_cut_at_the_reply_cap_is_a_protocol_error_on_success_only() -> None:
    """A 2xx answer cut at max_reply_bytes raises ProtocolError; a cut 429 stays RateLimitError."""
    cut = CappedBody(b'{"data": {"id": "3-abc", "status": "runn', limit=40)
    with pytest.raises(nb.ProtocolError, match="larger than 40 bytes"):
        decode_snapshot(200, cut)
    assert isinstance(_raises(429, CappedBody(b"<html>slow down", limit=15)), nb.RateLimitError)
