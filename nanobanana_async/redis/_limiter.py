"""`RedisLimiter`, the face of the Redis store to the client: its checks, lifetime and task group.

The work is done by its rooms: `Slots` (waiting for and giving back slots), `Pace` (pauses and
the rate bucket), `Budget` (credits) and `Keeper` (renewals and re-assertion).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import anyio

from .._config import RequestKind
from .._errors import ClientClosedError, InvalidRequestError
from .._limiter import BaseLimiter, Lease, check_limits
from ._budget import Budget
from ._keeper import Keeper
from ._listener import Listener
from ._pace import Pace
from ._slots import Slots
from ._store import Store

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

logger = logging.getLogger("nanobanana_async.redis")

#: How long aclose() waits for background give-backs to reach Redis (seconds).
CLOSE_PATIENCE = 10.0


class RedisLimiter(BaseLimiter):
    """A limiter shared through Redis by every process that uses the same store and `name`.

    Shared: the generation slots (leases that expire unless renewed, granted in arrival order),
    the pause after a 429, the request-rate bucket and, with `max_credits`, the credit budget.
    Use it as an async context manager, or call `aclose()` when done. Needs the `redis` extra
    (``pip install 'nanobanana-async[redis]'``).

    A new name, or an empty store, grants at once. When a store is lost (a flush, a restart, a
    restored older snapshot, a failover: the store is tied to the server's run id), the processes
    holding slots or credits re-assert them and start a grace of a third of a lease, during which
    new grants wait. Until the holders notice (within a sixth of a lease), the name may have up to
    twice `max_concurrency` in flight and twice `max_credits` committed; `strict=True` rules that
    out by granting nothing for `lease_seconds` after finding any store empty (first use too).

    Args:
        url: A ``redis://``, ``rediss://`` or ``unix://`` URL, or a `redis.asyncio` client
            (``Redis``, ``RedisCluster``, a Sentinel master), which stays yours to close.
        name: What the processes sharing one API key call their limiter (a key prefix).
        max_concurrency: Generations in flight at once over all processes; `None`: no limit.
        max_requests_per_second: Rate cap over all requests of the key; `None`: no cap.
        burst: How many requests may leave at once under the rate cap.
        lease_seconds: How long a slot, or a reservation, outlives a holder that stopped renewing
            it (a dead process); keep it well above any stall of the event loop. Every key of the
            name lapses two lease times after the last process holding anything left or died.
        max_credits: A credit budget shared by every process; `None`: none.
        strict: Grant nothing for `lease_seconds` after finding the store empty (no overshoot
            after a loss, but the first use of a name waits that long too).
    """

    def __init__(
        self,
        url: object,
        *,
        name: str,
        max_concurrency: int | None,
        max_requests_per_second: float | None = None,
        burst: int = 1,
        lease_seconds: float = 30.0,
        max_credits: int | None = None,
        strict: bool = False,
    ) -> None:
        check_limits(
            max_concurrency=max_concurrency,
            max_requests_per_second=max_requests_per_second,
            burst=burst,
            max_credits=max_credits,
        )
        if not isinstance(name, str) or not name or "{" in name or "}" in name:
            raise InvalidRequestError("name", "must be a non-empty string without braces")
        if (
            isinstance(lease_seconds, bool)
            or not isinstance(lease_seconds, (int, float))
            or not math.isfinite(lease_seconds)
            or lease_seconds < 0.5
        ):
            raise InvalidRequestError(
                "lease_seconds", "must be a number of seconds of at least 0.5"
            )
        if not isinstance(strict, bool):
            raise InvalidRequestError("strict", "must be True or False")
        self._store = Store(url, name)
        self.name = name
        self._max_concurrency = max_concurrency
        self.max_requests_per_second = max_requests_per_second
        self.burst = burst
        self.lease_seconds = float(lease_seconds)
        self.max_credits = max_credits
        self.strict = strict
        self._keeper = Keeper(self._store, lease_seconds=self.lease_seconds, strict=strict)
        self._budget = (
            Budget(self._keeper, max_credits, self._spawn) if max_credits is not None else None
        )
        self._pace = Pace(self._keeper, name, max_requests_per_second, burst)
        self._slots = (
            Slots(
                self._keeper, self._pace, name=name, max_concurrency=max_concurrency, strict=strict
            )
            if max_concurrency is not None
            else None
        )
        self._store.outage_backoff = min(self._store.outage_backoff, self.lease_seconds / 6)
        self._listener = (
            Listener(self._store, self._slots.wake, idle=self._slots.heartbeat * 4)
            if self._slots is not None
            else None
        )
        self._counter = itertools.count(1)
        self._group: TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        self._jobs = 0
        self._idle = asyncio.Event()
        self._closed = False
        # Slots kept for an uncertain create after its client closed (`release_later`).
        self._kept: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.RedisLimiter(url={self._store.shown!r}, name={self.name!r}, "
            f"max_concurrency={self._max_concurrency!r}, "
            f"max_requests_per_second={self.max_requests_per_second!r}, "
            f"lease_seconds={self.lease_seconds!r}, held={len(self._keeper.held)})"
        )

    @property
    def max_concurrency(self) -> int | None:
        """Generations allowed in flight at once over all processes, or None for no limit."""
        return self._max_concurrency

    @property
    def url(self) -> str:
        """Where the store is (the Redis URL without its password, or the client's address)."""
        return self._store.shown

    @property
    def held(self) -> int:
        """How many slots this process holds now."""
        return len(self._keeper.held)

    @property
    def requests_sent(self) -> int:
        """Requests sent to Redis by this limiter (scripts, subscriptions), for measurements."""
        return self._store.requests_sent

    async def __aenter__(self) -> RedisLimiter:
        """Start the limiter's background work; `aclose()` runs on exit."""
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the limiter."""
        await self.aclose()

    # --- lifetime ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        """Open the task group of the limiter's background work (at first use)."""
        if self._closed:
            raise ClientClosedError("the limiter is closed")
        if self._started is None:
            self._started = asyncio.Event()
            # The limiter's one raw task: it hosts the task group all its background work runs in.
            self._host = asyncio.get_running_loop().create_task(
                self._hold_group(self._started), name="nanobanana-redis-limiter"
            )
        await self._started.wait()

    async def _hold_group(self, started: asyncio.Event) -> None:
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._keeper.run)
            if self._slots is not None and self._listener is not None:
                group.start_soon(self._listener.run)
                group.start_soon(self._slots.run)
            started.set()
            await anyio.sleep_forever()

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        """Run *job* in the limiter's task group (aclose() lets it finish first, for a while)."""
        if self._group is None:
            job.close()
            return
        self._jobs += 1
        self._idle.clear()

        async def run() -> None:
            try:
                await job
            finally:
                self._jobs -= 1
                if not self._jobs:
                    self._idle.set()

        self._group.start_soon(run)

    async def aclose(self) -> None:
        """Stop waiting, give back the slots held (best effort), stop the background work and
        close the connections this limiter opened."""
        if self._closed:
            return
        self._closed = True
        if self._jobs:
            # Let the give-backs of abandoned reservations reach Redis.
            with anyio.move_on_after(CLOSE_PATIENCE):
                await self._idle.wait()
        waiting = self._slots.close() if self._slots is not None else []
        if self._host is not None:
            if self._group is not None:
                self._group.cancel_scope.cancel()
            await asyncio.wait([self._host])
        waiting += self._slots.close() if self._slots is not None else []
        # A slot kept for an uncertain create lapses in Redis at its lease's end instead.
        tokens = [token for token in self._keeper.held if token not in self._kept]
        tokens += waiting
        self._keeper.held.clear()
        if self._store.opened and (tokens or self._keeper.reserved):
            with anyio.move_on_after(5.0):
                try:
                    await self._store.run(
                        "release", [self._store.channel, self._keeper.process, *tokens]
                    )
                except Exception as exc:
                    logger.debug("giving back at close failed: %r", exc)
        await self._store.aclose()

    # --- slots ------------------------------------------------------------------------------------

    async def acquire(self) -> Lease:
        """Wait (in arrival order over all processes) for a slot and return its lease.

        Raises:
            LimiterUnavailableError: Redis cannot be reached; nothing may be sent.
        """
        if self._group is None:
            await self._start()
        if self._closed:
            raise ClientClosedError("the limiter is closed")
        token = f"{self._keeper.process}-{next(self._counter)}"
        if self._slots is None:
            return Lease(token)
        return await self._slots.acquire(token)

    async def release(self, lease: Lease) -> None:
        """Give a slot back and wake the waiters; never raises (an unreachable slot lapses)."""
        if self._closed or self._slots is None:
            self._keeper.held.pop(lease.token, None)
            return
        await self._slots.release(lease)

    def release_later(self, lease: Lease, seconds: float) -> bool:
        """Keep *lease* (renewed) for *seconds* more, then give it back; see `BaseLimiter`.

        The limiter's task group does it. A limiter closed before then does not give the slot
        back early: it lapses in Redis at its lease's end, at most `lease_seconds` later.
        """
        if (
            self._closed
            or self._group is None
            or self._slots is None
            or lease.token not in self._keeper.held
        ):
            return False
        self._kept.add(lease.token)
        self._group.start_soon(self._release_after, lease, seconds)
        return True

    async def _release_after(self, lease: Lease, seconds: float) -> None:
        await anyio.sleep(seconds)
        self._kept.discard(lease.token)
        await self.release(lease)

    async def renew(self, lease: Lease) -> None:
        """Keep a lease alive: refresh it in Redis when a third of its time has passed.

        The keeper of this process refreshes every lease it holds as often; never raises.
        """
        pushed = self._keeper.held.get(lease.token)
        if pushed is not None and time.monotonic() - pushed >= self.lease_seconds / 3:
            await self._keeper.renew([lease.token])

    # --- pauses and rate --------------------------------------------------------------------------

    async def pause(self, seconds: float) -> None:
        """Hold every request of the key, in every process, for *seconds*; never raises."""
        await self._pace.pause(seconds, self._closed)

    async def ready(self, kind: RequestKind = "create") -> None:
        """Wait for the shared pause and a token of the shared rate bucket.

        Without a rate cap, a poll within 0.2 s (`PAUSE_RECHECK`) of a check that found no pause
        leaves without asking again, and so does the first create after each slot granted
        within that time (the grant checked the pause): a pause set by another process reaches
        them that much later.

        Raises:
            LimiterUnavailableError: Redis cannot be reached and *kind* is ``"create"``. For a
                poll it never raises: local limits apply instead.
        """
        if self._group is None:
            await self._start()
        await self._pace.ready(kind)

    # --- budget -----------------------------------------------------------------------------------

    async def reserve(self, credits: int) -> None:
        """Reserve *credits* of the shared budget for a create about to be sent.

        The reservation is this process's until settled: if the process dies first, it lapses
        with its heartbeat (one lease time). During a grace (see the class) it waits for the
        grace to end. A reservation whose reply was lost, or whose caller was cancelled
        meanwhile, is given back.

        Raises:
            BudgetExceededError: They would pass the budget; nothing is reserved.
            LimiterUnavailableError: Redis cannot be reached.
        """
        if self._budget is None:
            return
        if self._group is None:
            await self._start()
        await self._budget.reserve(credits)

    async def settle(self, reserved: int, charged: int) -> None:
        """Turn a reservation of *reserved* into a charge of *charged*; never raises.

        A charge above the reservation (a dearer model) is counted in full: new reservations
        then wait for refunds or are refused until the books balance.
        """
        if self._budget is not None and (reserved or charged) and not self._closed:
            await self._budget.change("settle", charged, reserved)

    async def refund(self, credits: int) -> None:
        """Give *credits* of a failed task back to the shared budget; never raises."""
        if self._budget is not None and credits and not self._closed:
            await self._budget.change("adjust", -credits)
