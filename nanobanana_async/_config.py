"""Configuration values: timeouts, retries and polling. All times are float seconds."""

from __future__ import annotations

from collections.abc import Callable

import attrs

#: Seconds allowed to open a TCP (and TLS) connection.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds allowed for one HTTP exchange, from the first byte sent to the last byte read.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Seconds allowed to download one generated image.
DEFAULT_DOWNLOAD_TIMEOUT = 300.0
#: Seconds a task may take from submit to a terminal status before it times out.
DEFAULT_TASK_TIMEOUT = 600.0

#: How many times one request is tried in all (the first try included).
#: Ten tries ride out about two minutes of outage at the default backoffs (0.5 s doubling to 30 s).
DEFAULT_RETRY_ATTEMPTS = 10
DEFAULT_RETRY_INITIAL_BACKOFF = 0.5
DEFAULT_RETRY_MAX_BACKOFF = 30.0
#: Seconds one request may spend in retries before the last error is raised.
DEFAULT_RETRY_DEADLINE = 120.0

DEFAULT_POLL_MIN_INTERVAL = 0.5
DEFAULT_POLL_MAX_INTERVAL = 10.0
DEFAULT_POLL_JITTER = 0.1

#: Largest image download accepted, in bytes.
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: Largest API answer (create or poll) read, in bytes; a larger one is a `ProtocolError`.
#: Real answers are well under a kilobyte or two; the cap only stops a server from filling memory.
DEFAULT_MAX_REPLY_BYTES = 1024 * 1024


@attrs.frozen(kw_only=True)
class Timeouts:
    """Timeouts of the network and of tasks; `None` means no limit.

    Time spent queued in the client's own limiter is never charged to these.
    """

    connect: float | None = DEFAULT_CONNECT_TIMEOUT
    request: float | None = DEFAULT_REQUEST_TIMEOUT
    download: float | None = DEFAULT_DOWNLOAD_TIMEOUT
    task: float | None = DEFAULT_TASK_TIMEOUT


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

    Polls are retried on transport errors, timeouts, 429 and 5xx. A create is retried only when it
    provably never reached the server. `sleep=False` makes every wait zero, for tests.
    """

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    initial_backoff: float = DEFAULT_RETRY_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_RETRY_MAX_BACKOFF
    deadline: float | None = DEFAULT_RETRY_DEADLINE
    jitter: bool = True
    sleep: bool = True
    on_retry: Callable[[RetryEvent], None] | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts: must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy backoffs: must not be negative")

    def backoff(self, attempt: int, rand: float) -> float:
        """Return the wait before retry number *attempt* (1-based), given a uniform *rand*."""
        if not self.sleep:
            return 0.0
        cap = min(self.max_backoff, self.initial_backoff * 2.0 ** (attempt - 1))
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
        if self.min_interval <= 0 or self.max_interval < self.min_interval:
            raise ValueError("PollPolicy: need 0 < min_interval <= max_interval")
        if not 0 <= self.jitter < 1:
            raise ValueError("PollPolicy.jitter: must be in [0, 1)")
        if self.speed <= 0:
            raise ValueError("PollPolicy.speed: must be positive")
