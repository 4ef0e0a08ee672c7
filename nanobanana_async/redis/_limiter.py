"""`RedisLimiter`, the face of the Redis store to the client: slots, pauses, rate and budget."""

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
from .._errors import ClientClosedError, InvalidRequestError, LimiterUnavailableError
from .._limiter import BaseLimiter, Lease, Limiter, check_limits
from ._budget import TOLD_WAIT, Budget
from ._keeper import Keeper
from ._listener import Listener
from ._store import Store

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

logger = logging.getLogger("nanobanana_async.redis")

#: The longest a waiter of a dead process can hold its place in the queue (seconds).
MAX_WAITER_TTL = 5.0
#: How long an answer that found no pause in Redis lets requests go without asking again (s).
PAUSE_RECHECK = 0.2
#: How many waiters of one process queue in Redis at once (or the cap, if larger); the others
#: join in their order as those are served.
QUEUE_WINDOW = 64
#: How many slots or waiters given up while Redis was away are remembered to remove later (the
#: rest lapse on their own).
MAX_UNRELEASED = 1000
#: How long aclose() waits for background give-backs to reach Redis (seconds).
CLOSE_PATIENCE = 10.0


class _Waiter:
    __slots__ = ("future", "since")

    def __init__(self, future: asyncio.Future[Lease]) -> None:
        self.future = future
        self.since = time.monotonic()


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
        waiter_ttl = min(self.lease_seconds, MAX_WAITER_TTL)
        self._waiter_ttl_ms = round(waiter_ttl * 1000)
        # The dispatcher refreshes its waiters' places at least this often.
        self._heartbeat = waiter_ttl / 4
        self._store.outage_backoff = min(self._store.outage_backoff, self.lease_seconds / 6)
        self._listener = Listener(self._store, self._wake_up, idle=self._heartbeat * 4)
        self._window = max(max_concurrency or 1, QUEUE_WINDOW)
        self._counter = itertools.count(1)
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
        self._waiting: dict[str, _Waiter] = {}
        # Waiters that gave up, and leases given back while Redis could not be reached, to
        # remove from it when it can.
        self._unreleased: list[str] = []
        self._wake = asyncio.Event()
        self._told = False
        self._group: TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._started: asyncio.Event | None = None
        self._jobs = 0
        self._idle = asyncio.Event()
        self._closed = False

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
            if self._max_concurrency is not None:
                group.start_soon(self._listener.run)
                group.start_soon(self._dispatch)
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
        for waiter in self._waiting.values():
            if not waiter.future.done():
                waiter.future.set_exception(ClientClosedError("the limiter is closed"))
        if self._host is not None:
            if self._group is not None:
                self._group.cancel_scope.cancel()
            await asyncio.wait([self._host])
        tokens = [*self._keeper.held, *self._waiting, *self._unreleased]
        self._keeper.held.clear()
        self._waiting.clear()
        self._unreleased.clear()
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

    def _wake_up(self) -> None:
        self._wake.set()

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
        if self._max_concurrency is None:
            return Lease(token)
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiting[token] = _Waiter(future)
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted while we were being cancelled: give it straight back.
                await self.release(future.result())
            elif self._waiting.pop(token, None) is not None:
                self._unreleased.append(token)
                self._wake.set()
            raise

    async def _dispatch(self) -> None:
        """For the limiter's life: ask Redis for slots on behalf of every local waiter."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                await self._dispatch_round()
            self._told = False
            if self._unreleased:
                await self._flush_releases()

    async def _dispatch_round(self) -> None:
        """Ask once for the first window of local waiters, then wait for news or a timeout."""
        self._wake.clear()
        waiters = list(itertools.islice(self._waiting, self._window))
        try:
            _, answer = await self._keeper.call(
                "acquire",
                [self._max_concurrency or 0, self._waiter_ttl_ms, self._store.channel, *waiters],
            )
        except Exception as exc:
            # Fail closed: every create waiting here is abandoned unsent.
            error = exc
            if not isinstance(exc, (LimiterUnavailableError, ClientClosedError)):
                error = self._store.unavailable(exc)
            for waiter in self._waiting.values():
                if not waiter.future.done():
                    waiter.future.set_exception(error)
            # Their places in the queue (and any slot granted unseen) go when Redis is back.
            self._unreleased.extend(self._waiting)
            del self._unreleased[:-MAX_UNRELEASED]
            self._waiting.clear()
            return
        next_ms, why, in_flight, pause_ms = int(answer[1]), answer[2], int(answer[3]), answer[4]
        now = time.monotonic()
        if int(pause_ms) <= 0 and len(answer) > 5:
            self._passes = (self._passes if now - self._passes_at < PAUSE_RECHECK else 0) + len(
                answer[5:]
            )
            self._passes_at = now
        for token in answer[5:]:
            found = self._waiting.pop(token, None)
            if found is None or found.future.done():
                self._unreleased.append(token)  # its caller gave up meanwhile
                continue
            self._keeper.held[token] = now
            found.future.set_result(Lease(token))
        if self._unreleased:
            await self._flush_releases()
        if self._waiting:
            self._tell_wait(now, why, in_flight, next_ms)
            timeout = min(self._heartbeat, max(next_ms, 1) / 1000 + 0.005)
            with anyio.move_on_after(timeout):
                await self._wake.wait()

    def _tell_wait(self, now: float, why: str, in_flight: int, next_ms: int) -> None:
        """Say at INFO level why creates wait, once their wait passes `TOLD_WAIT` seconds."""
        oldest = next(iter(self._waiting.values()))
        if self._told or now - oldest.since < TOLD_WAIT:
            return
        self._told = True
        if why == "grace":
            reason = f"the store's grace ({next_ms / 1000:.1f} s left): " + (
                "a strict start" if self.strict else "holders re-assert after a lost store"
            )
        else:
            reason = f"the cap: {in_flight} of {self._max_concurrency} generation(s) in flight"
        logger.info(
            "%d create(s) of limiter %r wait for a slot (%.0f s so far) because of %s",
            len(self._waiting),
            self.name,
            now - oldest.since,
            reason,
        )

    async def _flush_releases(self) -> None:
        tokens, self._unreleased = self._unreleased, []
        try:
            await self._store.run("release", [self._store.channel, "", *tokens])
        except Exception:
            self._unreleased.extend(tokens)
            del self._unreleased[:-MAX_UNRELEASED]

    async def release(self, lease: Lease) -> None:
        """Give a slot back and wake the waiters; never raises (an unreachable slot lapses)."""
        if self._keeper.held.pop(lease.token, None) is None or self._closed:
            return
        tokens = [*self._unreleased, lease.token]
        self._unreleased = []
        try:
            await self._store.run("release", [self._store.channel, "", *tokens])
        except Exception as exc:
            # Given back at the next release that reaches Redis, else it lapses on its own.
            self._unreleased.extend(tokens)
            del self._unreleased[:-MAX_UNRELEASED]
            logger.warning(
                "could not release a slot in Redis at %s (%s); it lapses in %.0f s",
                self._store.shown,
                type(exc).__name__,
                self.lease_seconds,
            )

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
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._no_pause_at = -math.inf
        self._passes = 0
        if seconds <= 0 or self._closed:
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

    async def ready(self, kind: RequestKind = "create") -> None:
        """Wait for the shared pause and a token of the shared rate bucket.

        Without a rate cap, a poll within `PAUSE_RECHECK` seconds of a check that found no pause
        leaves without asking again, and so does the first create after each slot granted
        within that time (the grant checked the pause): a pause set by another process reaches
        them that much later.

        Raises:
            LimiterUnavailableError: Redis cannot be reached and *kind* is ``"create"``. For a
                poll it never raises: local limits apply instead.
        """
        if self._group is None:
            await self._start()
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
                    _, answer = await self._keeper.call("ready", [self._rate, self.burst])
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
                    self.name,
                    wait,
                    "a pause the server asked for (429)" if why == "pause" else "the rate cap",
                )
            await anyio.sleep(wait)

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
