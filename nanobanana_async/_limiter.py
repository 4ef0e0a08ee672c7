"""Limiters: how many generations may be in flight per key, how fast requests may leave.

`BaseLimiter` is the interface a shared store implements; `Limiter` is the in-process
implementation every client uses unless given another.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import time

import anyio
import attrs

from ._config import RequestKind
from ._credits import TOLD_WAIT, OpenReservations
from ._errors import BudgetExceededError, InvalidRequestError

logger = logging.getLogger("nanobanana_async")


@attrs.frozen
class Lease:
    """A generation slot held by one task; give it back with `release`."""

    token: str


class BaseLimiter(abc.ABC):
    """The interface of a limiter shared by every client of one API key.

    A limiter counts generations in flight (submitted and not yet terminal), honours pauses asked
    for by the server (`Retry-After`), may cap the request rate, and may hold a credit budget.
    `Limiter` is the in-process reference implementation; a shared store (see `RedisLimiter`)
    implements the same methods. How a client calls them:

    - a create: `reserve(cost)` (may raise `BudgetExceededError`), then `acquire()` (waits for a
      slot), then per attempt `ready("create")` right before the body leaves, then
      `settle(cost, charged)` once it is known what the create cost (0 when it was never sent,
      *cost* when the answer was lost and it may have been charged);
    - a poll: `ready("poll")` before each request, `renew(lease)` after each answer that says the
      task still runs, `refund(cost)` when the task failed (the service refunds failed tasks) and
      `release(lease)` once it is terminal;
    - a 429: `pause(seconds)`, already capped by `RetryPolicy.max_pause`.

    Before `reserve`, `acquire`, `ready`, `settle` and `release` the client tries the matching
    `*_nowait` method, which does the same at once when no wait and no I/O is needed and says
    whether it did; the defaults defer to the async method (`reserve_nowait` answers True at
    once only when `reserve` is not overridden: there is no budget), so a store need not
    implement them.

    Any exception from `reserve`, `acquire` or `ready("create")` (or their `*_nowait` forms)
    abandons the create unsent, and every slot and reservation taken so far is given back. A store
    that cannot be reached should fail closed there (raise `LimiterUnavailableError`), but must
    never raise from `ready("poll")`, `ready_nowait("poll")`, `renew`, `release` or `refund`,
    which run for tasks that are already paid for.
    """

    #: The credit budget this limiter holds, or None. A client sends no model of unknown price
    #: while a budget is set here (it could not tell what the create may cost).
    max_credits: int | None = None

    @property
    def max_concurrency(self) -> int | None:
        """Generations allowed in flight at once, or None for no limit (sizes fan-out windows)."""
        return None

    @abc.abstractmethod
    async def acquire(self) -> Lease:
        """Wait for a generation slot and return its lease."""

    def acquire_nowait(self) -> Lease | None:
        """Take a slot at once if one is free and that needs no I/O; else None (`acquire` runs).

        The client calls this first for every create (the hot path); the default (None) always
        defers to `acquire`.
        """
        return None

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give a slot back; releasing a lease twice is harmless."""

    def release_nowait(self, lease: Lease) -> bool:
        """Give a slot back at once if that needs no I/O; return False if `release()` must run.

        The client calls this first when a task ends, so that its waiters find the slot free.
        """
        return False

    def release_later(self, lease: Lease, seconds: float) -> bool:
        """Take charge of giving *lease* back after *seconds*, with no task; False: not done.

        A closing client calls this for a slot it still holds for a create whose answer was lost
        (the generation may still run on the server): the limiter keeps the slot taken until the
        hold ends, although the client is gone. The default returns False, and the client gives
        the slot back at once.
        """
        return False

    async def renew(self, lease: Lease) -> None:  # noqa: B027 - optional for in-process limiters
        """Keep a lease alive (stores whose leases expire need this); a no-op by default."""

    @abc.abstractmethod
    async def pause(self, seconds: float) -> None:
        """Let no request of this key leave for the next *seconds* (after a 429)."""

    @abc.abstractmethod
    async def ready(self, kind: RequestKind = "create") -> None:
        """Wait until one request of *kind* may leave (pauses, rate cap); takes one rate token."""

    def ready_nowait(self, kind: RequestKind = "create") -> bool:
        """`ready` at once if that needs neither a wait nor I/O; return False if `ready()` must run.

        The client calls this first before every request (the hot path); the default (False)
        always defers to `ready`.
        """
        return False

    async def aclose(self) -> None:  # noqa: B027 - nothing to close in process
        """Let go of the limiter's resources (connections to a store); a no-op by default."""

    async def reserve(self, credits: int) -> None:  # noqa: B027 - no budget by default
        """Reserve *credits* for a create about to be sent; raise `BudgetExceededError` if over."""

    def reserve_nowait(self, credits: int) -> bool:
        """`reserve` at once if that needs no I/O (True), or return False for `reserve` to run.

        Raises `BudgetExceededError` like `reserve`. The default: True when `reserve` is not
        overridden (there is no budget to hold), else False.
        """
        return type(self).reserve is BaseLimiter.reserve

    async def settle(self, reserved: int, charged: int) -> None:  # noqa: B027 - no budget
        """Turn a reservation of *reserved* into a charge of *charged* (0: never sent).

        A *charged* above *reserved* must be counted in full, and should stop new grants until
        the books balance (the other reservations of that amount may cost as much).
        """

    async def refund(self, credits: int) -> None:  # noqa: B027 - no budget by default
        """Give back *credits* of a task that failed (the service refunded them)."""

    def settle_nowait(self, reserved: int, charged: int) -> bool:
        """`settle` at once if that needs no I/O; return False if `settle()` must run.

        The client calls this first, so that an in-process budget is exact the moment a create's
        fate is known. The default (False) always defers to `settle`.
        """
        return False


class Limiter(BaseLimiter):
    """The in-process limiter: share one between clients of the same key in one event loop.

    Args:
        max_concurrency: Generations in flight at once; `None` means no limit.
        max_requests_per_second: Rate cap over all requests of the key; `None` means no cap.
        burst: How many requests may leave at once under the rate cap.
        max_credits: A credit budget shared by every client using this limiter; `None`: none.
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = 8,
        max_requests_per_second: float | None = None,
        burst: int = 1,
        max_credits: int | None = None,
    ) -> None:
        check_limits(
            max_concurrency=max_concurrency,
            max_requests_per_second=max_requests_per_second,
            burst=burst,
            max_credits=max_credits,
        )
        self._max_concurrency = max_concurrency
        self.max_requests_per_second = max_requests_per_second
        self._burst = float(burst)
        # fast_acquire: a free slot is taken without a trip through the event loop (the hot
        # path of every create); a waiter still queues in order.
        self._slots = (
            anyio.Semaphore(max_concurrency, fast_acquire=True)
            if max_concurrency is not None
            else None
        )
        self._held: set[str] = set()
        # Slots kept for creates whose answer was lost, after their client closed.
        self._kept: set[str] = set()
        # Whether the creates waiting now were told why (once per stretch of waiting).
        self._told = False
        self._tokens = float(burst)
        self._refilled = time.monotonic()
        self._paused_until = 0.0
        self._counter = itertools.count(1)
        self.max_credits = max_credits
        # Credits charged less refunds, and the reservations not settled yet.
        self._net = 0
        self._open = OpenReservations()
        #: The most generations that were ever in flight at once.
        self.max_in_flight = 0

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.Limiter(max_concurrency={self._max_concurrency!r}, "
            f"max_requests_per_second={self.max_requests_per_second!r}, "
            f"in_flight={len(self._held)})"
        )

    @property
    def max_concurrency(self) -> int | None:
        """Generations allowed in flight at once, or None for no limit."""
        return self._max_concurrency

    @property
    def committed_credits(self) -> int:
        """Credits committed against the budget: charged less refunds, plus what is reserved."""
        return self._net + self._open.total

    @property
    def in_flight(self) -> int:
        """How many generations hold a slot now."""
        return len(self._held)

    def acquire_nowait(self) -> Lease | None:
        """Take a slot at once if one is free and nobody waits for one; else return None.

        None also when a subclass overrides `acquire`, so that its `acquire` runs.
        """
        if type(self).acquire is not Limiter.acquire:
            return None
        if self._slots is not None:
            if self._slots.statistics().tasks_waiting:
                return None  # first come, first served
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                return None
        return self._lease()

    async def acquire(self) -> Lease:
        """Wait for a generation slot and return its lease.

        A wait over `TOLD_WAIT` seconds is logged at INFO level, once per stretch of waiting,
        with what holds the slots.
        """
        slots = self._slots
        if slots is not None:
            if slots.value and not slots.statistics().tasks_waiting:
                await slots.acquire()  # a free slot: no wait to tell of
            else:
                told = asyncio.get_running_loop().call_later(TOLD_WAIT, self._tell_wait)
                try:
                    await slots.acquire()
                finally:
                    told.cancel()
                    if not slots.statistics().tasks_waiting:
                        self._told = False
        return self._lease()

    def _tell_wait(self) -> None:
        if self._told or self._slots is None or not self._slots.statistics().tasks_waiting:
            return
        self._told = True
        kept = ""
        if self._kept:
            kept = f", {len(self._kept)} of them kept for creates whose answer was lost"
        logger.info(
            "%d create(s) wait over %.0f s for a slot of the limiter: %d of %d generation(s) "
            "in flight%s",
            self._slots.statistics().tasks_waiting,
            TOLD_WAIT,
            len(self._held),
            self._max_concurrency,
            kept,
        )

    def _lease(self) -> Lease:
        token = str(next(self._counter))
        self._held.add(token)
        self.max_in_flight = max(self.max_in_flight, len(self._held))
        return Lease(token)

    async def release(self, lease: Lease) -> None:
        """Give a slot back; releasing a lease twice is harmless."""
        self._give_back(lease)

    def release_nowait(self, lease: Lease) -> bool:
        """Give a slot back at once (False when a subclass overrides `release`, to call it)."""
        if type(self).release is not Limiter.release:
            return False
        self._give_back(lease)
        return True

    def release_later(self, lease: Lease, seconds: float) -> bool:
        """Give *lease* back after *seconds*, by an event-loop timer (no task); see `BaseLimiter`.

        False (nothing done) when a subclass overrides `release`, or outside an event loop.
        """
        if type(self).release is not Limiter.release or lease.token not in self._held:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._kept.add(lease.token)
        loop.call_later(max(seconds, 0.0), self._give_back, lease)
        return True

    def _give_back(self, lease: Lease) -> None:
        if lease.token in self._held:
            self._held.discard(lease.token)
            self._kept.discard(lease.token)
            if self._slots is not None:
                self._slots.release()
                if self._told and not self._slots.statistics().tasks_waiting:
                    self._told = False

    async def pause(self, seconds: float) -> None:
        """Let no request of this key leave for the next *seconds*."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def ready(self, kind: RequestKind = "create") -> None:
        """Wait until a request may leave: no pause in force and a rate token at hand."""
        while True:
            wait = self._wait_or_take()
            if wait <= 0.0:
                return
            await asyncio.sleep(wait)

    def ready_nowait(self, kind: RequestKind = "create") -> bool:
        """Take a rate token at once if no pause is in force and one is at hand (False if not).

        False also when a subclass overrides `ready`, so that its `ready` runs.
        """
        if type(self).ready is not Limiter.ready:
            return False
        return self._wait_or_take() <= 0.0

    def _wait_or_take(self) -> float:
        # 0: the request may leave now (its rate token is taken); else the seconds to wait first.
        now = time.monotonic()
        if self._paused_until > now:
            return self._paused_until - now
        rate = self.max_requests_per_second
        if rate is None:
            return 0.0
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    async def reserve(self, credits: int) -> None:
        """Reserve *credits* against the budget; raise `BudgetExceededError` if they won't fit."""
        self._reserve(credits)

    def reserve_nowait(self, credits: int) -> bool:
        """Reserve at once (False when a subclass overrides `reserve`, to call it)."""
        if type(self).reserve is not Limiter.reserve:
            return False
        self._reserve(credits)
        return True

    def _reserve(self, credits: int) -> None:
        budget = self.max_credits
        expected = self._open.expected(credits)
        if budget is not None and self.committed_credits + expected > budget:
            raise BudgetExceededError(expected, self.committed_credits, budget)
        self._open.add(credits)

    async def settle(self, reserved: int, charged: int) -> None:
        """Turn a reservation of *reserved* into a charge of *charged* (0: never sent).

        A charge above the reservation is counted in full, and the other reservations of that
        amount are counted at the same cost until they settle: no new grant passes the budget.
        """
        self._settle(reserved, charged)

    def _settle(self, reserved: int, charged: int) -> None:
        expected = self._open.close(reserved)
        if charged == reserved:
            # Either the answer said so or it was lost (may have been charged): count the most
            # that a create of this amount is known to cost.
            self._net += expected
            return
        self._net += charged
        if charged > reserved:
            self._open.cost_more(reserved, charged)

    def settle_nowait(self, reserved: int, charged: int) -> bool:
        """Settle at once (False when a subclass overrides `settle`, to call it)."""
        if type(self).settle is not Limiter.settle:
            return False
        self._settle(reserved, charged)
        return True

    async def refund(self, credits: int) -> None:
        """Give back *credits* of a task that failed."""
        self._net -= credits


def check_limits(
    *,
    max_concurrency: int | None,
    max_requests_per_second: float | None,
    burst: int,
    max_credits: int | None,
) -> None:
    """Refuse limits no limiter can honour, naming the field (shared by every implementation)."""
    if max_concurrency is not None and (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        raise InvalidRequestError("max_concurrency", "must be an integer of at least 1, or None")
    if max_requests_per_second is not None and not max_requests_per_second > 0:
        raise InvalidRequestError("max_requests_per_second", "must be positive, or None")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise InvalidRequestError("burst", "must be an integer of at least 1")
    if max_credits is not None and (
        isinstance(max_credits, bool) or not isinstance(max_credits, int) or max_credits < 0
    ):
        raise InvalidRequestError("max_credits", "must be a non-negative integer, or None")
