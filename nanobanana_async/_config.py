"""Configuration values: timeouts, retries and polling. All times are float seconds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs

from ._errors import InvalidRequestError

#: What a request is, for a limiter's gate: a paid create, or a free and repeatable poll.
RequestKind = Literal["create", "poll"]

#: Seconds allowed to open a TCP (and TLS) connection.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds allowed for one HTTP exchange, from the first byte sent to the last byte read.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Seconds allowed to download one generated image.
DEFAULT_DOWNLOAD_TIMEOUT = 300.0
#: Seconds a task may take from submit to a terminal status before it times out.
DEFAULT_TASK_TIMEOUT = 600.0
#: Creates reuse connections idle for less than this (below gunicorn's 2 s idle timeout).
DEFAULT_CREATE_KEEPALIVE = 1.0

#: How many times one request is tried in all (the first try included).
#: Ten tries ride out about two minutes of outage at the default backoffs (0.5 s doubling to 30 s).
DEFAULT_RETRY_ATTEMPTS = 10
DEFAULT_RETRY_INITIAL_BACKOFF = 0.5
DEFAULT_RETRY_MAX_BACKOFF = 30.0
#: Seconds one request may spend in retries before the last error is raised.
DEFAULT_RETRY_DEADLINE = 120.0

DEFAULT_POLL_MIN_INTERVAL = 0.5
#: Longest wait between polls: from a first poll shortly before the fastest tasks end, a
#: nano-banana task (8-20 s) is then one wait from the end its progress predicts.
DEFAULT_POLL_MAX_INTERVAL = 15.0
DEFAULT_POLL_JITTER = 0.1

#: Largest image download accepted, in bytes.
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: Largest API answer (create or poll) read, in bytes; a larger one is a `ProtocolError`.
#: Real answers are well under a kilobyte or two; the cap only stops a server from filling memory.
DEFAULT_MAX_REPLY_BYTES = 1024 * 1024


def _seconds(field: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        rule = "a number of seconds >= 0" + (", or None" if allow_none else "")
        raise InvalidRequestError(field, f"must be {rule}; got {value!r}")


def positive_int(field: str, value: object, *, allow_none: bool = False) -> None:
    """Refuse anything but an int >= 1 (or None when allowed), naming *field*."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        rule = "an integer >= 1" + (", or None" if allow_none else "")
        raise InvalidRequestError(field, f"must be {rule}; got {value!r}")


@attrs.frozen(kw_only=True)
class Timeouts:
    """Timeouts of the network and of tasks; `None` means no limit.

    Time spent queued in the client's own limiter is never charged to these.

    `create_keepalive` is how long an idle connection may still carry a create (1 s by default:
    below the shortest common server idle timeout, gunicorn's 2 s, and never past a
    `Keep-Alive: timeout=` the server announces). A create sent on a connection the server has
    just closed is a false `SubmitUncertainError`; reusing only briefly idle connections avoids
    that race while saving a connect (and a TLS handshake) per create under load. 0 is the
    strict mode: a fresh connection for every create.
    """

    connect: float | None = DEFAULT_CONNECT_TIMEOUT
    request: float | None = DEFAULT_REQUEST_TIMEOUT
    download: float | None = DEFAULT_DOWNLOAD_TIMEOUT
    task: float | None = DEFAULT_TASK_TIMEOUT
    create_keepalive: float = DEFAULT_CREATE_KEEPALIVE

    def __attrs_post_init__(self) -> None:
        for name in ("connect", "request", "download", "task"):
            _seconds(f"Timeouts.{name}", getattr(self, name))
        _seconds("Timeouts.create_keepalive", self.create_keepalive, allow_none=False)


@attrs.frozen(kw_only=True)
class RetryEvent:
    """What `RetryPolicy.on_retry` hooks receive before each retry sleep."""

    endpoint: str
    attempt: int
    wait: float
    cause: BaseException
    task_id: str | None = None


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, bounded by attempts and a deadline.

    Polls and downloads are retried on transport errors, timeouts, 429 and 5xx. A create is
    re-sent only when it provably never reached the server: after connection refused, a DNS
    failure or a 429, and after a 503 only with `resend_on_503=True` (a 503 may come from behind
    the point where the service charges). A `Retry-After` longer than `max_pause` (by default the
    policy's `deadline`) fails that request at once with `RateLimitError`, and no request of the
    key waits longer than that cap. `sleep=False` makes every wait zero, for tests.
    """

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    initial_backoff: float = DEFAULT_RETRY_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_RETRY_MAX_BACKOFF
    deadline: float | None = DEFAULT_RETRY_DEADLINE
    max_pause: float | None = None
    resend_on_503: bool = False
    jitter: bool = True
    sleep: bool = True
    on_retry: Callable[[RetryEvent], None] | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        positive_int("RetryPolicy.attempts", self.attempts)
        _seconds("RetryPolicy.initial_backoff", self.initial_backoff, allow_none=False)
        _seconds("RetryPolicy.max_backoff", self.max_backoff, allow_none=False)
        _seconds("RetryPolicy.deadline", self.deadline)
        _seconds("RetryPolicy.max_pause", self.max_pause)

    @property
    def pause_cap(self) -> float | None:
        """The longest `Retry-After` honoured: `max_pause`, else `deadline` (None: no cap)."""
        return self.max_pause if self.max_pause is not None else self.deadline

    def backoff_cap(self, attempt: int) -> float:
        """Return the longest wait before retry number *attempt* (1-based), before jitter."""
        return min(self.max_backoff, self.initial_backoff * 2.0 ** (attempt - 1))

    def backoff(self, attempt: int, rand: float) -> float:
        """Return the wait before retry number *attempt* (1-based), given a uniform *rand*."""
        if not self.sleep:
            return 0.0
        cap = self.backoff_cap(attempt)
        return cap * rand if self.jitter else cap


@attrs.frozen(kw_only=True)
class PollPolicy:
    """Bounds of the adaptive poll timing.

    `initial_delay=None` picks the first poll by model and image size (and, once seen, by the
    durations this client observed). `speed` divides every delay, so tests against an emulator
    running `speed` times faster poll at the same pace relative to the work.
    """

    initial_delay: float | None = None
    min_interval: float = DEFAULT_POLL_MIN_INTERVAL
    max_interval: float = DEFAULT_POLL_MAX_INTERVAL
    jitter: float = DEFAULT_POLL_JITTER
    speed: float = 1.0

    def __attrs_post_init__(self) -> None:
        _seconds("PollPolicy.initial_delay", self.initial_delay)
        _seconds("PollPolicy.min_interval", self.min_interval, allow_none=False)
        _seconds("PollPolicy.max_interval", self.max_interval, allow_none=False)
        if not 0 < self.min_interval <= self.max_interval:
            raise InvalidRequestError(
                "PollPolicy.min_interval", "need 0 < min_interval <= max_interval"
            )
        if isinstance(self.jitter, bool) or not 0 <= self.jitter < 1:
            raise InvalidRequestError("PollPolicy.jitter", "must be in [0, 1)")
        if isinstance(self.speed, bool) or not self.speed > 0:
            raise InvalidRequestError("PollPolicy.speed", "must be a positive number")
