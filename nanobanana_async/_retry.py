"""One backoff for every repeatable request: attempts, deadline, full jitter, `Retry-After` cap.

Creates, polls and downloads all count their failures with a `Backoff`; what may be repeated at
all is decided by the caller (a create only when it provably never arrived).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from ._config import RetryPolicy
from ._errors import RateLimitError
from ._wire import OTHER_TASK_TRIES, OtherTaskError


class Backoff:
    """The retries of one request (or of one task's run of failed polls) under a `RetryPolicy`.

    Call `next_wait()` after each failure: it returns the seconds to wait before trying again, or
    None when the request must give up (out of attempts, past the deadline, or a `Retry-After`
    longer than `RetryPolicy.max_pause`). After a 429, `pause` is what the whole key must wait.
    """

    __slots__ = ("_clock", "_policy", "_rng", "attempt", "pause", "started")

    def __init__(
        self,
        policy: RetryPolicy,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._rng = rng
        self._clock = clock
        self.started = clock()
        #: Failed attempts so far.
        self.attempt = 0
        #: Seconds the whole key must pause after the last failure (a 429), else 0.
        self.pause = 0.0

    def next_wait(self, error: BaseException) -> float | None:
        """Count a failed attempt; return the wait before the next one, or None to give up."""
        policy = self._policy
        self.attempt += 1
        attempt = self.attempt
        wait = policy.backoff(attempt, self._rng.random())
        self.pause = 0.0
        if isinstance(error, RateLimitError):
            hinted = error.retry_after
            cap = policy.pause_cap
            if hinted is not None and cap is not None and hinted > cap:
                # A hint past the cap fails this request now; the key still waits the cap.
                self.pause = cap
                return None
            if hinted is None:
                # No hint: the key waits out this attempt's backoff cap (no wait without sleeping).
                hinted = policy.backoff_cap(attempt) if policy.sleep else 0.0
            self.pause = hinted
            if policy.sleep:
                wait = max(wait, hinted)
        if attempt >= policy.attempts:
            return None
        if isinstance(error, OtherTaskError) and attempt >= OTHER_TASK_TRIES:
            return None  # a crossed answer may heal at once; a cache that serves it will not
        deadline = policy.deadline
        if deadline is not None and self._clock() + wait - self.started > deadline:
            return None
        return wait
