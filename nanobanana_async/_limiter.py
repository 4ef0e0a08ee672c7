"""Limiters: how many generations may be in flight per key, how fast requests may leave.

`BaseLimiter` is the interface a shared store implements (acquire, release, renew, pause); `Limiter`
is the in-process implementation every client uses unless given another.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import time

import anyio
import attrs


@attrs.frozen
class Lease:
    """A generation slot held by one task; give it back with `release`."""

    token: str


class BaseLimiter(abc.ABC):
    """The interface of a limiter shared by every client of one API key.

    Implementations count generations in flight (submitted and not yet terminal), honour pauses
    asked for by the server (`Retry-After`), and may cap the request rate.
    """

    @abc.abstractmethod
    async def acquire(self) -> Lease:
        """Wait for a generation slot and return its lease."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give a slot back; releasing a lease twice is harmless."""

    async def renew(self, lease: Lease) -> None:  # noqa: B027 - optional for in-process limiters
        """Keep a lease alive (stores whose leases expire need this); a no-op by default."""

    @abc.abstractmethod
    async def pause(self, seconds: float) -> None:
        """Let no request of this key leave for the next *seconds* (after a 429)."""

    @abc.abstractmethod
    async def ready(self) -> None:
        """Wait until a request of this key may leave (pauses and the rate cap)."""


class Limiter(BaseLimiter):
    """The in-process limiter: share one between clients of the same key in one event loop.

    Args:
        max_concurrency: Generations in flight at once; `None` means no limit.
        max_requests_per_second: Rate cap over all requests of the key; `None` means no cap.
        burst: How many requests may leave at once under the rate cap.
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = 8,
        max_requests_per_second: float | None = None,
        burst: int = 1,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("Limiter.max_concurrency: must be at least 1 or None")
        if max_requests_per_second is not None and max_requests_per_second <= 0:
            raise ValueError("Limiter.max_requests_per_second: must be positive or None")
        if burst < 1:
            raise ValueError("Limiter.burst: must be at least 1")
        self.max_concurrency = max_concurrency
        self.max_requests_per_second = max_requests_per_second
        self._burst = float(burst)
        self._slots = anyio.Semaphore(max_concurrency) if max_concurrency is not None else None
        self._held: set[str] = set()
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self._paused_until = 0.0
        self._counter = itertools.count(1)
        #: The most generations that were ever in flight at once.
        self.max_in_flight = 0

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.Limiter(max_concurrency={self.max_concurrency!r}, "
            f"max_requests_per_second={self.max_requests_per_second!r}, "
            f"in_flight={len(self._held)})"
        )

    @property
    def in_flight(self) -> int:
        """How many generations hold a slot now."""
        return len(self._held)

    async def acquire(self) -> Lease:
        """Wait for a generation slot and return its lease."""
        if self._slots is not None:
            await self._slots.acquire()
        token = str(next(self._counter))
        self._held.add(token)
        self.max_in_flight = max(self.max_in_flight, len(self._held))
        return Lease(token)

    async def release(self, lease: Lease) -> None:
        """Give a slot back; releasing a lease twice is harmless."""
        self.release_nowait(lease)

    def release_nowait(self, lease: Lease) -> None:
        """Give a slot back without awaiting (safe from callbacks)."""
        if lease.token in self._held:
            self._held.discard(lease.token)
            if self._slots is not None:
                self._slots.release()

    async def pause(self, seconds: float) -> None:
        """Let no request of this key leave for the next *seconds*."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def ready(self) -> None:
        """Wait until a request may leave: no pause in force and a rate token at hand."""
        while True:
            now = time.monotonic()
            if self._paused_until > now:
                await asyncio.sleep(self._paused_until - now)
                continue
            rate = self.max_requests_per_second
            if rate is None:
                return
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / rate)
