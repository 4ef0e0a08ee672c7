"""The wire format: request bodies out, envelopes and error shapes in. Wire names live only here."""

from __future__ import annotations

import email.utils
import http
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import aiohttp
import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override
from cattrs.preconf.json import make_converter

from ._errors import (
    EXCERPT_LIMIT,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
    excerpt,
)
from ._inputs import DataRef, FileRef, Reference, UrlRef
from ._models import GeneratedImage, GenerationRequest, TaskSnapshot, TaskStatus

CREATE_PATH = "/api/v1/image/nano-banana"
RESULT_PATH = "/api/v1/image/nano-banana/result"

_STATUS_ALIASES = {
    "running": TaskStatus.RUNNING,
    "pending": TaskStatus.RUNNING,
    "queued": TaskStatus.RUNNING,
    "processing": TaskStatus.RUNNING,
    "in_progress": TaskStatus.RUNNING,
    "submitted": TaskStatus.RUNNING,
    "succeeded": TaskStatus.SUCCEEDED,
    "success": TaskStatus.SUCCEEDED,
    "completed": TaskStatus.SUCCEEDED,
    "failed": TaskStatus.FAILED,
    "failure": TaskStatus.FAILED,
    "error": TaskStatus.FAILED,
}
_SUCCESS_CODES = (0, 200)
_ERROR_KEYS = ("error", "message", "msg", "detail", "error_message", "errorMessage")
_RETRY_KEYS = ("retry_after", "retryAfter", "retry_after_seconds")
#: Phrases that may turn a generic error code into a status (checked in this order).
_REFINING_PHRASES: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        402,
        (
            "insufficient credit",
            "insufficient balance",
            "not enough credit",
            "insufficient account balance",
        ),
    ),
    (
        401,
        (
            "invalid api key",
            "api key is invalid",
            "unauthorized",
            "unauthorised",
            "not authenticated",
            "authentication failed",
        ),
    ),
    (429, ("rate limit", "too many requests")),
    (404, ("task not found",)),
)
_SCRIPT = re.compile(rb"<(script|style)[^>]*>.*?</\1>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(rb"<[^>]{0,2000}>")


# --- requests ------------------------------------------------------------------------------------


def create_form(
    request: GenerationRequest, references: list[Reference]
) -> tuple[aiohttp.FormData | aiohttp.BytesPayload, list[IO[bytes]]]:
    """Build the multipart create body the provider's curl example sends; return it and open files.

    With files on disk, aiohttp streams them (the caller closes the returned files). Otherwise the
    whole body is built here as one buffer: aiohttp's multipart writer costs a dozen writes a part.
    """
    fields: list[tuple[str, str | bytes | Path, str | None, str | None]] = [
        ("prompt", request.prompt, None, None),
        ("model", request.model, None, None),
        ("mode", request.mode, None, None),
        ("aspectRatio", request.aspect_ratio, None, None),
        ("imageSize", request.image_size, None, None),
    ]
    for ref in references:
        if isinstance(ref, FileRef):
            fields.append(("imageFile", ref.source, ref.filename, ref.content_type))
    fields.extend(
        ("imageUrl", ref.url, None, None) for ref in references if isinstance(ref, UrlRef)
    )
    fields.extend(
        ("imageData", ref.data_url, None, None) for ref in references if isinstance(ref, DataRef)
    )
    if not any(isinstance(value, Path) for _, value, _, _ in fields):
        return _multipart_bytes(fields), []
    form = aiohttp.FormData(quote_fields=False, default_to_multipart=True)
    opened: list[IO[bytes]] = []
    for name, value, filename, content_type in fields:
        if isinstance(value, Path):
            stream = value.open("rb")
            opened.append(stream)
            form.add_field(name, stream, filename=filename, content_type=content_type)
        elif filename is not None:
            form.add_field(name, value, filename=filename, content_type=content_type)
        else:
            form.add_field(name, value)
    return form, opened


def _quote(value: str) -> str:
    # The HTML standard's escaping of names and file names in multipart/form-data.
    return value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")


def _multipart_bytes(
    fields: list[tuple[str, str | bytes | Path, str | None, str | None]],
) -> aiohttp.BytesPayload:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, value, filename, content_type in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"'
        if filename is not None:
            head += f'; filename="{_quote(filename)}"\r\nContent-Type: {content_type}'
        chunks.append(head.encode() + b"\r\n\r\n")
        chunks.append(value if isinstance(value, bytes) else str(value).encode())
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return aiohttp.BytesPayload(
        b"".join(chunks), content_type=f"multipart/form-data; boundary={boundary}"
    )


def result_body(task_id: str) -> bytes:
    """Return the JSON body of a result poll."""
    return json.dumps({"taskId": task_id}).encode()


# --- answers -------------------------------------------------------------------------------------


class Answer(bytes):
    """An answer's body, with the request that got it: `source` (``"POST URL"``, no secret).

    `decode_answer` names the source in the errors it raises, so a wrong base URL shows.
    """

    source: str | None

    def __new__(cls, data: bytes, *, source: str | None = None) -> Answer:
        """Wrap the bytes of an answer to the request *source*."""
        body = super().__new__(cls, data)
        body.source = source
        return body


class CappedBody(Answer):
    """The first `limit` bytes of an answer that was longer (the rest was never read)."""

    limit: int

    def __new__(cls, data: bytes, *, limit: int, source: str | None = None) -> CappedBody:
        """Wrap the bytes read of an answer cut at *limit*."""
        body = bytes.__new__(cls, data)
        body.source = source
        body.limit = limit
        return body


def parse_retry_after(value: object, now: Callable[[], float] = time.time) -> float | None:
    """Return the seconds a `Retry-After` value (seconds or an HTTP date) asks to wait, or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except OverflowError:
            return None
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                return None
            seconds = when.timestamp() - now()
    else:
        return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _message_of(obj: Any) -> str | None:
    if isinstance(obj, dict):
        for key in _ERROR_KEYS:
            value = obj.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
            if isinstance(value, dict):
                inner = _message_of(value)
                if inner:
                    return inner
    return None


def _code_of(obj: dict[str, Any]) -> int | None:
    code = obj.get("code")
    if code is None and isinstance(obj.get("error"), dict):
        code = obj["error"].get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str):
        try:
            return int(code.strip())
        except ValueError:
            return None
    return None


def _retry_hint(obj: Any) -> float | None:
    if isinstance(obj, dict):
        for key in _RETRY_KEYS:
            if key in obj:
                return parse_retry_after(obj[key])
        inner = obj.get("error")
        if isinstance(inner, dict):
            return _retry_hint(inner)
    return None


def _status_for_body_error(code: int | None, message: str) -> int:
    # The wire decides: an HTTP-status-like code is the status. A generic code (-1, a vendor
    # number, none at all) may be refined by an unambiguous phrase only, never by a loose word:
    # "failed to generate image" holds "rate" and is not a rate limit.
    if code is not None and 400 <= code <= 599:
        return code
    lowered = " ".join(message.lower().split())
    for status, phrases in _REFINING_PHRASES:
        if any(phrase in lowered for phrase in phrases):
            return status
    return 400


def _is_failed_task(data: Any) -> bool:
    if not isinstance(data, dict) or "id" not in data:
        return False
    status = data.get("status")
    return isinstance(status, str) and _STATUS_ALIASES.get(status.strip().lower()) is (
        TaskStatus.FAILED
    )


def api_error(
    status: int,
    message: str,
    body: Any,
    retry_after: float | None = None,
    *,
    source: str | None = None,
) -> APIStatusError:
    """Return the typed error for an error answer (to the request *source*, when known)."""
    if status == 429:
        return RateLimitError(
            message, status=status, body=body, retry_after=retry_after, source=source
        )
    cls: type[APIStatusError] = {
        400: BadRequestError,
        401: AuthenticationError,
        402: InsufficientCreditsError,
        403: PermissionDeniedError,
        404: NotFoundError,
    }.get(status, ServerError if status >= 500 else APIStatusError)
    return cls(message, status=status, body=body, source=source)


def _reason(status: int) -> str:
    """The words of an answer without any (an empty error body): the status's own phrase."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "no error text"


def decode_answer(
    status: int, body: bytes, retry_after_header: str | None = None
) -> dict[str, Any]:
    """Return the task object of an answer, or raise its typed error.

    Handles `{"data": ...}`, `{"code", "msg", "data"}`, a bare task object, and every error shape of
    docs/api.md (`error`, `message`, `code`+`msg`, `success: false`, text, HTML), on any status.
    """
    source = body.source if isinstance(body, Answer) else None
    if 200 <= status < 300 and isinstance(body, CappedBody):
        raise ProtocolError(
            f"the answer is larger than {body.limit} bytes (max_reply_bytes); not read",
            status=status,
            body=body[:EXCERPT_LIMIT],
            source=source,
        )
    try:
        parsed: Any = json.loads(body) if body.strip()[:1] in (b"{", b"[") else None
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
        parsed = None
    if 200 <= status < 300:
        if not isinstance(parsed, dict):
            raise ProtocolError(
                "the answer is not a JSON object", status=status, body=body, source=source
            )
        code = _code_of(parsed)
        failed = parsed.get("success") is False or (code is not None and code not in _SUCCESS_CODES)
        if failed:
            data = parsed.get("data")
            if isinstance(data, dict) and _is_failed_task(data):
                # A task that ended failed at once (its credits refunded): a task, not an error.
                return data
            message = _message_of(parsed) or f"error code {code}"
            error_status = _status_for_body_error(code, message)
            raise api_error(error_status, message, parsed, _retry_hint(parsed), source=source)
        data = parsed.get("data", parsed if "status" in parsed else None)
        if not isinstance(data, dict):
            raise ProtocolError(
                "the answer holds no task object", status=status, body=body, source=source
            )
        return data
    if parsed is not None:
        message = _message_of(parsed) or excerpt(body)
        hint = _retry_hint(parsed)
        shown: Any = parsed
    else:
        # Plain text or a proxy's HTML page: keep its words, drop the markup.
        text = _TAG.sub(b" ", _SCRIPT.sub(b" ", body)) if _TAG.search(body) else body
        message = excerpt(text) or _reason(status)
        hint = None
        shown = excerpt(body)
    retry_after = parse_retry_after(retry_after_header)
    raise api_error(
        status, message, shown, retry_after if retry_after is not None else hint, source=source
    )


# --- snapshots -----------------------------------------------------------------------------------


def _id_hook(value: Any, _: Any) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"bad task id {value!r}")


def _status_hook(value: Any, _: Any) -> TaskStatus:
    if isinstance(value, str):
        status = _STATUS_ALIASES.get(value.strip().lower())
        if status is not None:
            return status
    raise ValueError(f"unknown status {value!r}")


def _progress_hook(value: Any, _: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        value = float(value.strip().rstrip("%"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"bad progress {value!r}")
    return min(100, max(0, int(value)))


def _text_hook(value: Any, _: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    # Relatives put objects here ({"code": ..., "message": ...}); keep them readable.
    return json.dumps(value, separators=(",", ":"), sort_keys=True)[:500]


def _cost_hook(value: Any, _: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = float(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"bad credits_cost {value!r}")
    return int(value)


def _image_hook(value: Any) -> GeneratedImage:
    if isinstance(value, str) and value:
        return GeneratedImage(url=value)
    if isinstance(value, dict):
        url = value.get("url")
        if isinstance(url, str) and url:
            return GeneratedImage(url=url, content=_text_hook(value.get("content"), None))
    raise TypeError(f"bad result item {value!r}")


def _results_hook(value: Any, _: Any) -> tuple[GeneratedImage, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(_image_hook(item) for item in value)
    raise TypeError(f"bad results {value!r}")


_converter = make_converter(detailed_validation=False, forbid_extra_keys=False)
_structure_snapshot = make_dict_structure_fn(
    TaskSnapshot,
    _converter,
    id=override(struct_hook=_id_hook),
    status=override(struct_hook=_status_hook),
    progress=override(struct_hook=_progress_hook),
    results=override(struct_hook=_results_hook),
    failure_reason=override(struct_hook=_text_hook),
    error=override(struct_hook=_text_hook),
    credits_cost=override(struct_hook=_cost_hook),
)


_UNSAFE_ID = re.compile(r"[\x00-\x1f\x7f/\\]")


def is_safe_task_id(task_id: str) -> bool:
    """Whether a task id from the server can go into file names and journals as it is."""
    return (
        bool(task_id)
        and len(task_id) <= 512
        and task_id.strip(". ") != ""
        and _UNSAFE_ID.search(task_id) is None
    )


#: Answers about another task a poll takes in a row before it fails (a cache rarely heals).
OTHER_TASK_TRIES = 3


class OtherTaskError(ProtocolError):
    """Raised when a poll's answer is about another task; retried `OTHER_TASK_TRIES` times only."""


def structure_snapshot(
    data: dict[str, Any], *, task_id: str | None = None, body: bytes = b""
) -> TaskSnapshot:
    """Build a `TaskSnapshot` from a task object.

    *task_id* is the task polled: it fills a missing id, and an answer naming another task is a
    `ProtocolError`. Without it (a create's answer) an id unfit for file names is one.
    """
    if task_id is not None and "id" not in data:
        data = {**data, "id": task_id}
    try:
        snapshot = _structure_snapshot(data, TaskSnapshot)
    except (
        cattrs.BaseValidationError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise ProtocolError(f"unreadable task object ({exc})", body=body or repr(data)) from exc
    if task_id is not None and snapshot.id != task_id:
        # An answer about another task (a proxy's cache, a crossed reply): never take it for ours.
        raise OtherTaskError(
            f"the answer is about task {snapshot.id[:80]!r}, not {task_id[:80]!r}",
            body=body or repr(data),
        )
    if task_id is None and not is_safe_task_id(snapshot.id):
        raise ProtocolError(
            f"unusable task id {snapshot.id[:80]!r} (control characters, a path separator, or "
            "dots only)",
            body=body or repr(data),
        )
    if snapshot.status is TaskStatus.SUCCEEDED and snapshot.progress != 100:
        snapshot = attrs.evolve(snapshot, progress=100)
    return snapshot


def decode_snapshot(
    status: int, body: bytes, *, task_id: str | None = None, retry_after: str | None = None
) -> TaskSnapshot:
    """Decode a create or result answer into a snapshot, or raise its typed error."""
    return structure_snapshot(decode_answer(status, body, retry_after), task_id=task_id, body=body)


def unstructure(value: Any) -> Any:
    """Unstructure an attrs value with the private converter (for journals and `--json`)."""
    return _converter.unstructure(value)


def structure(value: Any, cls: type[Any]) -> Any:
    """Structure *value* into *cls* with the private converter."""
    return _converter.structure(value, cls)
