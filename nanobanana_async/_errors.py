"""The error classes; every exception this library raises is a `NanoBananaError`.

The tree, and what each error means, is drawn in the public module `nanobanana_async.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import GenerationRequest, TaskSnapshot
    from ._task import Task

#: How much of an unreadable or error body an exception carries.
EXCERPT_LIMIT = 300


def excerpt(body: bytes | str, limit: int = EXCERPT_LIMIT) -> str:
    """Return the start of *body* as printable text, for error messages."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NanoBananaError(Exception):
    """Raised for every failure of this library; the root of the error tree.

    `task_id` names the task the error ended, when it concerns a created task.
    """

    task_id: str | None = None


class InvalidRequestError(NanoBananaError, ValueError):
    """Raised when input breaks a rule of the API before anything is sent.

    Nothing was sent and nothing was spent. `field` names the offending field.
    """

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class ClientStateError(NanoBananaError, RuntimeError):
    """Raised when the client is used after it closed or from another event loop."""


class ClientClosedError(ClientStateError):
    """Raised when a closed client is used, or to waiters woken by its closing."""


class TransportError(NanoBananaError):
    """Raised when the network failed and retries (where safe) did not help."""


class ProtocolError(NanoBananaError):
    """Raised when the server's answer cannot be read as the API describes.

    `excerpt` holds the start of the body, `status` the HTTP status, `source` the request that
    got the answer (``"POST https://host/path"``; never the key), when known.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: bytes | str = b"",
        source: str | None = None,
    ) -> None:
        self.status = status
        self.excerpt = excerpt(body)
        self.source = source
        detail = f" (HTTP {status})" if status is not None else ""
        if source is not None:
            detail += f" from {source}"
        super().__init__(f"{message}{detail}: {self.excerpt!r}" if body else f"{message}{detail}")


class DownloadError(ProtocolError):
    """Raised when a result URL answers something that is not the image (a page, text, nothing).

    Nothing is written. The task's image may still be fetched later (the link may have been
    served by a proxy or be briefly wrong); `url` is the link, `content_type` what it answered.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        content_type: str | None = None,
        status: int | None = None,
        body: bytes | str = b"",
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.url = url
        self.content_type = content_type


class SubmitUncertainError(NanoBananaError):
    """Raised when a create may have reached the server but its answer did not reach us.

    It was not re-sent, because the API has no idempotency key and a second create would be charged
    again. `request` is the request that may or may not have become a task.
    """

    def __init__(self, request: GenerationRequest, cause: BaseException) -> None:
        super().__init__(
            f"the create for prompt {request.prompt[:40]!r} may have reached the server and been "
            f"charged, but its answer was lost ({type(cause).__name__}: {cause}); not re-sent"
        )
        self.request = request


class BudgetExceededError(NanoBananaError):
    """Raised when a submit would pass the credit budget; nothing was sent."""

    def __init__(self, cost: int, spent: int, budget: int) -> None:
        super().__init__(
            f"a create costing {cost} credits would pass the budget of {budget} "
            f"({spent} already spent or reserved)"
        )
        self.cost = cost
        self.spent = spent
        self.budget = budget


class SubmitAbandonedError(NanoBananaError):
    """Raised when a create was given up before its body left (a hook vetoed it); nothing spent.

    `request` is the request that was not sent.
    """

    def __init__(self, request: GenerationRequest, reason: str) -> None:
        super().__init__(f"the create was abandoned before it was sent: {reason}")
        self.request = request
        self.reason = reason


class LimiterUnavailableError(NanoBananaError):
    """Raised when a shared limiter cannot reach its store; the create was not sent."""


class APIStatusError(NanoBananaError):
    """Raised when the API answers with an error status (or an error body with HTTP 200).

    `status` is the HTTP status (or the status the body's code stands for), `body` the parsed body
    (a dict for JSON, else an excerpt string), `message` the server's own words, `source` the
    request that got the answer (``"POST https://host/path"``; never the key), when known: a
    wrong base URL shows in the message.
    """

    def __init__(
        self, message: str, *, status: int, body: Any = None, source: str | None = None
    ) -> None:
        where = f" (from {source})" if source is not None else ""
        super().__init__(f"HTTP {status}: {message}{where}")
        self.status = status
        self.body = body
        self.message = message
        self.source = source


class BadRequestError(APIStatusError):
    """Raised when the API rejects a request as invalid (HTTP 400)."""


class AuthenticationError(APIStatusError):
    """Raised when the API key is missing or wrong (HTTP 401)."""


class InsufficientCreditsError(APIStatusError):
    """Raised when the key's balance does not cover the create (HTTP 402, or code -1)."""


class PermissionDeniedError(APIStatusError):
    """Raised when the key may not do this (HTTP 403)."""


class NotFoundError(APIStatusError):
    """Raised when the task id is unknown to the API (HTTP 404)."""


class RateLimitError(APIStatusError):
    """Raised when the API asks us to slow down (HTTP 429) and retries ran out.

    `retry_after` is the hinted wait in seconds, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        body: Any = None,
        retry_after: float | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body, source=source)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """Raised when the API fails on its side (HTTP 5xx) and retries ran out."""


class TaskError(NanoBananaError):
    """Raised when a task cannot deliver its result; `task_id` names it."""

    def __init__(self, message: str, *, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class SubmitHookError(TaskError):
    """Raised when a submit's `on_created` hook fails after its task was created.

    The task is paid for and still tracked: `task_id` names it, `task` is its handle (await it,
    or attach to it later with `Client.task(task_id)`), and the hook's error is the cause.
    """

    def __init__(self, task: Task, cause: BaseException) -> None:
        super().__init__(
            f"task {task.id} was created (and is tracked), but the on_created hook failed: "
            f"{type(cause).__name__}: {cause}",
            task_id=task.id,
        )
        self.task = task


class TaskFailedError(TaskError):
    """Raised when a task ended with status `failed` (its credits are refunded by the service).

    `failure_reason` is the service's reason (`error` is the one worth retrying).
    """

    def __init__(self, snapshot: TaskSnapshot) -> None:
        reason = snapshot.failure_reason or "unknown"
        detail = f": {snapshot.error}" if snapshot.error else ""
        super().__init__(f"task {snapshot.id} failed ({reason}){detail}", task_id=snapshot.id)
        self.snapshot = snapshot
        self.failure_reason = snapshot.failure_reason


class TaskTimeoutError(TaskError, TimeoutError):
    """Raised when a task is not done within the time allowed; the task may still finish."""
