"""The pace of a `RedisLimiter`: the shared pause after a 429 and the shared request-rate bucket.

A grant of slots that found no pause in Redis lends the creates it lets go a pass each, for
`PAUSE_RECHECK` seconds, so that they leave without asking Redis again.
"""

from __future__ import annotations

import logging
import math
import time

import anyio

from .._config import RequestKind
from .._credits import TOLD_WAIT
from .._errors import ClientClosedError, LimiterUnavailableError
from .._limiter import Limiter
from ._keeper import Keeper

logger = logging.getLogger("nanobanana_async.redis")

#: How long an answer that found no pause in Redis lets requests go without asking again (s).
PAUSE_RECHECK = 0.2


class Pace:
    """The shared pause and rate bucket of one name, as seen by one process.

    Args:
        keeper: What this process holds, and the epoch (every check runs through it).
        name: The limiter's name, for messages.
        max_requests_per_second: The shared rate cap; `None`: none.
        burst: How many requests may leave at once under the rate cap.
    """

    def __init__(
        self, keeper: Keeper, name: str, max_requests_per_second: float | None, burst: int
    ) -> None:
        self._keeper = keeper
        self._store = keeper.store
        self._name = name
        self._burst = burst
        self._rate = "" if max_requests_per_second is None else repr(max_requests_per_second)
        # The local rate cap applies to polls while Redis cannot be reached.
        self._local = Limiter(
            max_concurrency=None, max_requests_per_second=max_requests_per_second, burst=burst
        )
        # Our own pauses hold always, even when Redis forgot them (a restart).
        self._paused_until = 0.0
        self._no_pause_at = -math.inf
        # Creates that may leave without asking Redis: one per slot granted by an answer that
        # found no pause, for `PAUSE_RECHECK` seconds (the grant checked the pause for them).
        self._passes = 0
        self._passes_at = -math.inf

    def granted(self, slots: int, now: float) -> None:
        """Count *slots* granted at *now* by an answer of Redis that found no pause."""
        fresh = now - self._passes_at < PAUSE_RECHECK
        self._passes = (self._passes if fresh else 0) + slots
        self._passes_at = now

    async def pause(self, seconds: float, closed: bool) -> None:
        """Hold every request of the key for *seconds*; see `RedisLimiter.pause`."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._no_pause_at = -math.inf
        self._passes = 0
        if seconds <= 0 or closed:
            return
        try:
            await self._store.run(
                "pause", ["", "", self._keeper.lease_ms, "", "", max(1, math.ceil(seconds * 1000))]
            )
        except Exception as exc:
            logger.warning(
                "could not share a pause through Redis at %s (%s); pausing this process only",
                self._store.shown,
                type(exc).__name__,
            )

    async def ready(self, kind: RequestKind) -> None:
        """Wait for the shared pause and a rate token; see `RedisLimiter.ready`."""
        started = time.monotonic()
        told = False
        while True:
            now = time.monotonic()
            wait, why = self._paused_until - now, "pause"
            if wait <= 0:
                if kind == "poll" and now < self._store.outage_until:
                    await self._local.ready(kind)
                    return
                if not self._rate:
                    if kind == "poll" and now - self._no_pause_at < PAUSE_RECHECK:
                        return
                    if kind == "create" and self._passes and now - self._passes_at < PAUSE_RECHECK:
                        self._passes -= 1
                        return
                try:
                    _, answer = await self._keeper.call("ready", [self._rate, self._burst])
                except Exception as exc:
                    if kind != "poll":
                        if isinstance(exc, (LimiterUnavailableError, ClientClosedError)):
                            raise
                        raise self._store.unavailable(exc) from exc
                    logger.debug("Redis unavailable for a poll's check, local limits: %r", exc)
                    await self._local.ready(kind)
                    return
                wait, why = int(answer[1]) / 1000, str(answer[2])
                if wait <= 0:
                    self._no_pause_at = time.monotonic()
                    return
            if not told and time.monotonic() - started + wait > TOLD_WAIT:
                told = True
                logger.info(
                    "requests of limiter %r wait %.1f s because of %s",
                    self._name,
                    wait,
                    "a pause the server asked for (429)" if why == "pause" else "the rate cap",
                )
            await anyio.sleep(wait)
