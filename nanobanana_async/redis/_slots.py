"""The slots of a `RedisLimiter`: its local waiters, the dispatcher that asks Redis for them in
arrival order, the give-backs, and the line that tells why creates wait."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time

import anyio

from .._credits import TOLD_WAIT
from .._errors import ClientClosedError, LimiterUnavailableError
from .._limiter import Lease
from ._keeper import Keeper
from ._pace import Pace

logger = logging.getLogger("nanobanana_async.redis")

#: The longest a waiter of a dead process can hold its place in the queue (seconds).
MAX_WAITER_TTL = 5.0
#: How many waiters of one process queue in Redis at once (or the cap, if larger); the others
#: join in their order as those are served.
QUEUE_WINDOW = 64
#: How many slots or waiters given up while Redis was away are remembered to remove later (the
#: rest lapse on their own).
MAX_UNRELEASED = 1000


class _Waiter:
    __slots__ = ("future", "since")

    def __init__(self, future: asyncio.Future[Lease]) -> None:
        self.future = future
        self.since = time.monotonic()


class Slots:
    """The generation slots of one name, as waited for and held by one process.

    Args:
        keeper: What this process holds (the leases granted go into ``keeper.held``).
        pace: Told how many slots each answer granted without a pause.
        name: The limiter's name, for messages.
        max_concurrency: The shared cap.
        strict: Whether the store starts with a grace (for messages).
    """

    def __init__(
        self, keeper: Keeper, pace: Pace, *, name: str, max_concurrency: int, strict: bool
    ) -> None:
        self._keeper = keeper
        self._store = keeper.store
        self._pace = pace
        self._name = name
        self._max = max_concurrency
        self._strict = strict
        waiter_ttl = min(keeper.lease_seconds, MAX_WAITER_TTL)
        self._waiter_ttl_ms = round(waiter_ttl * 1000)
        #: The dispatcher refreshes its waiters' places at least this often (seconds).
        self.heartbeat = waiter_ttl / 4
        self._window = max(max_concurrency, QUEUE_WINDOW)
        self._waiting: dict[str, _Waiter] = {}
        # Waiters that gave up, and leases given back while Redis could not be reached, to
        # remove from it when it can.
        self._unreleased: list[str] = []
        # Releases waiting for the one on its way to Redis, sent together after it.
        self._releasing: list[str] = []
        self._release_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._told = False

    def wake(self) -> None:
        """Make the dispatcher ask Redis again (a slot may have come free)."""
        self._wake.set()

    async def acquire(self, token: str) -> Lease:
        """Wait for a slot for *token*; see `RedisLimiter.acquire`."""
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiting[token] = _Waiter(future)
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted while we were being cancelled: the dispatcher gives it back.
                self.give_back(future.result().token)
            elif self._waiting.pop(token, None) is not None:
                self._unreleased.append(token)
                self._wake.set()
            raise

    def give_back(self, token: str) -> None:
        """Hand a held slot to the dispatcher, which gives it back to Redis soon (no await)."""
        if self._keeper.held.pop(token, None) is not None:
            self._keep([token])
            self._wake.set()

    def _keep(self, tokens: list[str]) -> None:
        # Slots and places to remove from Redis later: by the dispatcher, or at close.
        self._unreleased.extend(tokens)
        del self._unreleased[:-MAX_UNRELEASED]

    async def run(self) -> None:
        """For the limiter's life: ask Redis for slots on behalf of every local waiter."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                await self._round()
            self._told = False
            if self._unreleased:
                await self._flush()

    async def _round(self) -> None:
        """Ask once for the first window of local waiters, then wait for news or a timeout."""
        self._wake.clear()
        waiters = list(itertools.islice(self._waiting, self._window))
        try:
            _, answer = await self._keeper.call(
                "acquire", [self._max, self._waiter_ttl_ms, self._store.channel, *waiters]
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
            self._keep(list(self._waiting))
            self._waiting.clear()
            return
        next_ms, why, in_flight, pause_ms = int(answer[1]), answer[2], int(answer[3]), answer[4]
        now = time.monotonic()
        if int(pause_ms) <= 0 and len(answer) > 5:
            self._pace.granted(len(answer[5:]), now)
        for token in answer[5:]:
            found = self._waiting.pop(token, None)
            if found is None or found.future.done():
                self._unreleased.append(token)  # its caller gave up meanwhile
                continue
            self._keeper.held[token] = now
            found.future.set_result(Lease(token))
        if self._unreleased:
            await self._flush()
        if self._waiting:
            self._tell(now, why, in_flight, next_ms)
            timeout = min(self.heartbeat, max(next_ms, 1) / 1000 + 0.005)
            with anyio.move_on_after(timeout):
                await self._wake.wait()

    def _tell(self, now: float, why: str, in_flight: int, next_ms: int) -> None:
        """Say at INFO level why creates wait, once their wait passes `TOLD_WAIT` seconds."""
        oldest = next(iter(self._waiting.values()))
        if self._told or now - oldest.since < TOLD_WAIT:
            return
        self._told = True
        if why == "grace":
            reason = f"the store's grace ({next_ms / 1000:.1f} s left): " + (
                "a strict start" if self._strict else "holders re-assert after a lost store"
            )
        else:
            reason = f"the cap: {in_flight} of {self._max} generation(s) in flight"
        logger.info(
            "%d create(s) of limiter %r wait for a slot (%.0f s so far) because of %s",
            len(self._waiting),
            self._name,
            now - oldest.since,
            reason,
        )

    async def _send(self, tokens: list[str]) -> None:
        # Remove *tokens* from Redis; on any failure, cancellation included, they are kept for
        # the next send or the closing (a release sent twice is harmless), and it re-raises.
        try:
            await self._store.run("release", [self._store.channel, "", *tokens])
        except BaseException:
            self._keep(tokens)
            raise

    async def _flush(self) -> None:
        tokens, self._unreleased = self._unreleased, []
        # Given back after the limiter closed, a slot lapses on its own.
        with contextlib.suppress(Exception):
            await self._send(tokens)

    async def release(self, lease: Lease) -> None:
        """Give a slot back and wake the waiters; never raises (an unreachable slot lapses).

        Releases made while another is on its way to Redis go together in the next request,
        each returning once the request that carried it is answered.
        """
        if self._keeper.held.pop(lease.token, None) is None:
            return
        self._releasing.append(lease.token)
        try:
            await self._release_queued(lease.token)
        except BaseException:
            # Cancelled while queued behind another release, or on the way (`_send` kept the
            # slots then): the dispatcher gives them back.
            if lease.token in self._releasing:
                self._releasing.remove(lease.token)
                self._keep([lease.token])
            self._wake.set()
            raise

    async def _release_queued(self, token: str) -> None:
        async with self._release_lock:
            if token not in self._releasing:
                return  # carried by the request of a release queued before this one
            tokens = [*self._unreleased, *self._releasing]
            self._unreleased, self._releasing = [], []
            try:
                await self._send(tokens)
            except Exception as exc:
                # Given back at the next release that reaches Redis, else they lapse on their own.
                logger.warning(
                    "could not release %d slot(s) in Redis at %s (%s); they lapse in %.0f s",
                    len(tokens),
                    self._store.shown,
                    type(exc).__name__,
                    self._keeper.lease_seconds,
                )

    def close(self) -> list[str]:
        """Fail every waiter (the limiter closes); return the tokens to give back to Redis."""
        for waiter in self._waiting.values():
            if not waiter.future.done():
                waiter.future.set_exception(ClientClosedError("the limiter is closed"))
        tokens = [*self._waiting, *self._unreleased, *self._releasing]
        self._waiting.clear()
        self._unreleased.clear()
        self._releasing.clear()
        return tokens
