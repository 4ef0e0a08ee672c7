"""A limiter shared through Redis by every process and host that uses one API key.

Everything shared lives under the keys ``nanobanana:{<name>}:*`` (one hash tag, so a cluster keeps
them on one node) and changes only inside Lua scripts, so every step is atomic:

- ``meta`` (hash): the store's epoch and recovery deadline, the waiter sequence, the 429 pause,
  the request-rate bucket and the committed credits;
- ``op:<id>``: for a few minutes, the answer of each change of the credits, so that a script the
  client runs again after a lost reply changes them only once;
- ``leases`` (sorted set): one member per generation in flight, scored by its expiry (server
  time, ms);
- ``queue`` (sorted set): waiting acquirers in arrival order, and ``beats`` their liveness
  deadlines;
- the channel ``nanobanana:{<name>}:wake``: a message after each release, so waiters retry at once.

Restarts: the store's epoch is a random id written by the first script that finds none. A process
remembers the epoch it last saw, its own leases and its own committed credits; when a script reports
another epoch (Redis restarted, was flushed, lost the meta key or failed over), the process
re-asserts what it holds. A fresh epoch grants no new slot and reserves no credit for
``lease_seconds`` from the moment the store is found empty: every process that holds slots or
credits checks the epoch every third of a lease time, so every lease that was live before is by
then re-asserted by its (living) holder or expired, and every living process's credits count again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from ._config import RequestKind
from ._errors import (
    BudgetExceededError,
    ClientClosedError,
    InvalidRequestError,
    LimiterUnavailableError,
)
from ._limiter import BaseLimiter, Lease, Limiter, check_limits

if TYPE_CHECKING:
    from types import TracebackType

    import redis.asyncio
    from redis.commands.core import AsyncScript

__all__ = ["RedisLimiter"]

logger = logging.getLogger("nanobanana_async.redis")

#: The longest a waiter of a dead process can hold its place in the queue (seconds).
MAX_WAITER_TTL = 5.0
#: How long a check that found no pause in Redis lets polls go without asking again (seconds).
POLL_PAUSE_RECHECK = 0.2
#: Connections to Redis of one limiter at most.
MAX_CONNECTIONS = 16
#: How many waiters of one process queue in Redis at once (or the cap, if larger); the others
#: join in their order as those are served.
QUEUE_WINDOW = 64
#: How many slots or waiters given up while Redis was away are remembered to remove later (the
#: rest lapse on their own).
MAX_UNRELEASED = 1000
#: How long a store that failed is not asked again by the calls that must never fail (seconds).
OUTAGE_BACKOFF = 1.0

# --- Lua -----------------------------------------------------------------------------------------
# Every script that reads or writes shared state starts with the epoch check: KEYS[1] is the meta
# hash, ARGV[1] the epoch the caller knows, ARGV[2] a fresh epoch id to write if there is none,
# ARGV[3] the lease time in ms. It returns {"epoch", id} instead of running when they differ.

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 7: TIME, then writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta = KEYS[1]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A new store (first use, a restart, a flush, an evicted or failed-over meta key). Leases
  -- held before were renewed within one lease time, and every living holder makes a call (its
  -- keeper's) within a third of one: grant no new slot and reserve no credit for one lease time
  -- from now, while the holders re-assert their slots and credits.
  local grace = now + tonumber(ARGV[3])
  redis.call('HSET', meta, 'epoch', ARGV[2], 'grace', grace)
  epoch = ARGV[2]
end
if epoch ~= ARGV[1] then
  return {'epoch', epoch}
end
local grace = tonumber(redis.call('HGET', meta, 'grace') or '0')
"""

# KEYS: meta, leases, queue, beats. ARGV[4] max, ARGV[5] waiter ttl ms, ARGV[6] channel,
# ARGV[7..] the caller's waiters in its arrival order. Grants the caller's waiters among the first
# `free` of the queue; returns {"ok", ms until the next lease expiry (or the end of the grace),
# granted...}.
_ACQUIRE = (
    _PRELUDE
    + """
local leases, queue, beats = KEYS[2], KEYS[3], KEYS[4]
local lease_ms, max, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local freed = redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', beats, '-inf', now)
for _, w in ipairs(dead) do
  redis.call('ZREM', queue, w)
  redis.call('ZREM', beats, w)
end
local mine = {}
local result = {'ok', 0}
for i = 7, #ARGV do
  local w = ARGV[i]
  if redis.call('ZSCORE', leases, w) then
    -- Granted by an earlier run of this call whose reply was lost (a retry): granted still.
    result[#result + 1] = w
  else
    mine[w] = true
    if not redis.call('ZSCORE', queue, w) then
      redis.call('ZADD', queue, redis.call('HINCRBY', meta, 'seq', 1), w)
    end
    redis.call('ZADD', beats, now + ttl, w)
  end
end
if now < grace then
  result[2] = grace - now
else
  local free = max - redis.call('ZCARD', leases)
  if free > 0 then
    for _, w in ipairs(redis.call('ZRANGE', queue, 0, free - 1)) do
      if mine[w] then
        redis.call('ZREM', queue, w)
        redis.call('ZREM', beats, w)
        redis.call('ZADD', leases, now + lease_ms, w)
        result[#result + 1] = w
      end
    end
  end
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  if first[2] then
    result[2] = tonumber(first[2]) - now
  else
    result[2] = lease_ms
  end
end
if (freed > 0 or #dead > 0) and redis.call('ZCARD', queue) > 0 then
  redis.call('PUBLISH', ARGV[6], 'expired')
end
return result
"""
)


def _put_back(*, first: int) -> str:
    """Lua: extend the leases ARGV[first..], putting back any that is gone during the grace or
    when there is room; leaves {"ok", leases that could not be put back...} in `result`."""
    return f"""
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local result = {{'ok'}}
for i = {first}, #ARGV do
  local w = ARGV[i]
  if redis.call('ZSCORE', leases, w) or now < grace or redis.call('ZCARD', leases) < max then
    redis.call('ZADD', leases, now + lease_ms, w)
  else
    result[#result + 1] = w
  end
end
"""


# KEYS: meta, leases. ARGV[4] max, ARGV[5..] leases to extend. A lease that is gone (it lapsed, or
# the store was lost) is put back during the grace or when there is room; returns {"ok", lost...}.
_RENEW = (
    _PRELUDE
    + """
local leases = KEYS[2]
local lease_ms, max = tonumber(ARGV[3]), tonumber(ARGV[4])
"""
    + _put_back(first=5)
    + """
return result
"""
)

# KEYS: meta, leases, op. ARGV[1] the epoch the caller re-asserts into, ARGV[2] lease ms, ARGV[3]
# max, ARGV[4] credits, ARGV[5] op ttl ms, ARGV[6..] leases. Runs after a script answered
# {"epoch", id}. The credits count once even when a lost reply makes the client run it again.
_REASSERT = (
    """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta, leases = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if epoch ~= ARGV[1] then
  return {'epoch', epoch or ''}
end
local grace = tonumber(redis.call('HGET', meta, 'grace') or '0')
local lease_ms, max = tonumber(ARGV[2]), tonumber(ARGV[3])
"""
    + _put_back(first=6)
    + """
if tonumber(ARGV[4]) > 0 and redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then
  redis.call('HINCRBY', meta, 'credits', ARGV[4])
end
return result
"""
)

# KEYS: leases, queue, beats. ARGV[1] channel, ARGV[2..] leases or waiters to drop. Wakes the
# waiters when a slot came free. Needs no epoch: it only removes.
_RELEASE = """
local freed = 0
for i = 2, #ARGV do
  freed = freed + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
end
if freed > 0 and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('PUBLISH', ARGV[1], 'released')
end
return freed
"""

# KEYS: meta. ARGV[4] rate per second ('' for none), ARGV[5] burst. Returns {"ok", ms to wait}
# (0: go, and a rate token was taken).
_READY = (
    _PRELUDE
    + """
local pause = tonumber(redis.call('HGET', meta, 'pause') or '0')
if pause > now then
  return {'ok', pause - now}
end
if ARGV[4] == '' then
  return {'ok', 0}
end
local rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', meta, 'tokens', 'filled')
local tokens = tonumber(state[1]) or burst
local filled = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - filled) * rate / 1000)
if tokens >= 1 then
  redis.call('HSET', meta, 'tokens', tostring(tokens - 1), 'filled', now)
  return {'ok', 0}
end
redis.call('HSET', meta, 'tokens', tostring(tokens), 'filled', now)
return {'ok', math.ceil((1 - tokens) * 1000 / rate)}
"""
)

# KEYS: meta. ARGV[1] ms. Extends the pause (never shortens it).
_PAUSE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0')
if until_ms > pause then
  redis.call('HSET', KEYS[1], 'pause', until_ms)
end
return 1
"""

# KEYS: meta, op. ARGV[4] credits to add (may be negative), ARGV[5] the budget ('' : no check),
# ARGV[6] op ttl ms. Returns {"ok", committed}, {"over", committed} (nothing added) or, for a
# reservation during the grace of a new store, {"wait", ms} (nothing added). The op key keeps the
# answer a while: run again (a retry after a lost reply), the script returns it and adds nothing.
_CREDITS = (
    _PRELUDE
    + """
local op = KEYS[2]
local done = redis.call('GET', op)
if done then
  local status, figure = string.match(done, '^(%a+) (-?%d+)$')
  return {status, tonumber(figure)}
end
local committed = tonumber(redis.call('HGET', meta, 'credits') or '0')
local delta = tonumber(ARGV[4])
local result
if ARGV[5] ~= '' and delta > 0 then
  if now < grace then
    return {'wait', grace - now}
  end
  if committed + delta > tonumber(ARGV[5]) then
    result = {'over', committed}
  end
end
if not result then
  result = {'ok', redis.call('HINCRBY', meta, 'credits', delta)}
end
redis.call('SET', op, result[1] .. ' ' .. result[2], 'PX', ARGV[6])
return result
"""
)

# KEYS: meta, op. ARGV[1] credits the op reserved, ARGV[2] op ttl ms. Takes back a reservation
# whose caller gave up on it (cancelled, or its reply lost): if it was added, it is subtracted;
# if it has not run yet, it never will. Returns 1 when credits were given back.
_GIVE_BACK = """
local done = redis.call('GET', KEYS[2])
if done and string.sub(done, 1, 3) == 'ok ' then
  redis.call('HINCRBY', KEYS[1], 'credits', -tonumber(ARGV[1]))
  redis.call('SET', KEYS[2], 'cancelled 0', 'PX', ARGV[2])
  return 1
end
if not done then
  redis.call('SET', KEYS[2], 'cancelled 0', 'PX', ARGV[2])
end
return 0
"""

_STORE_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)


def redact_url(url: str) -> str:
    """Return *url* without its password (in the authority or the query), for messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{host}" if user else host
        query = urllib.parse.urlencode(
            [
                (key, value)
                for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                if key.lower() != "password"
            ]
        )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unreadable Redis URL>"


class _Waiter:
    __slots__ = ("future", "id")

    def __init__(self, waiter_id: str, future: asyncio.Future[Lease]) -> None:
        self.id = waiter_id
        self.future = future


class RedisLimiter(BaseLimiter):
    """A limiter shared through Redis by every process that uses the same `url` and `name`.

    Shared: the generation slots (leases that expire unless renewed, granted in arrival order),
    the pause after a 429, the request-rate bucket and, with `max_credits`, the credit budget.
    Use it as an async context manager, or call `aclose()` when done. Needs the `redis` extra
    (``pip install 'nanobanana-async[redis]'``).

    Args:
        url: The Redis URL, for example ``redis://localhost:6379/0``.
        name: What the processes sharing one API key call their limiter (a key prefix).
        max_concurrency: Generations in flight at once over all processes; `None`: no limit.
        max_requests_per_second: Rate cap over all requests of the key; `None`: no cap.
        burst: How many requests may leave at once under the rate cap.
        lease_seconds: How long a slot outlives a holder that stopped renewing it (a dead
            process); keep it well above any stall of the event loop. An empty store (first
            use, a restart or flush of Redis) grants no new slot and reserves no credit for
            this long from the moment the store is found empty.
        max_credits: A credit budget shared by every process; `None`: none.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        max_concurrency: int | None,
        max_requests_per_second: float | None = None,
        burst: int = 1,
        lease_seconds: float = 30.0,
        max_credits: int | None = None,
    ) -> None:
        check_limits(
            max_concurrency=max_concurrency,
            max_requests_per_second=max_requests_per_second,
            burst=burst,
            max_credits=max_credits,
        )
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise InvalidRequestError("url", "must be a redis://, rediss:// or unix:// URL")
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
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            raise LimiterUnavailableError(
                "RedisLimiter needs the redis package: pip install 'nanobanana-async[redis]'"
            ) from exc
        self._url = url
        self._shown_url = redact_url(url)
        self.name = name
        self._max_concurrency = max_concurrency
        self.max_requests_per_second = max_requests_per_second
        self.burst = burst
        self.lease_seconds = float(lease_seconds)
        self.max_credits = max_credits
        prefix = f"nanobanana:{{{name}}}:"
        self._meta = prefix + "meta"
        self._leases = prefix + "leases"
        self._queue = prefix + "queue"
        self._beats = prefix + "beats"
        self._channel = prefix + "wake"
        self._lease_ms = max(1, round(self.lease_seconds * 1000))
        self._waiter_ttl = min(self.lease_seconds, MAX_WAITER_TTL)
        # The dispatcher refreshes its waiters' places at least this often.
        self._heartbeat = self._waiter_ttl / 4
        self._window = max(max_concurrency or 1, QUEUE_WINDOW)
        self._process = os.urandom(8).hex()
        self._counter = itertools.count(1)
        # What this process holds: leases (token -> when last pushed to Redis) and credits.
        self._held: dict[str, float] = {}
        self._committed = 0
        self._epoch = ""
        # How long Redis remembers the answer of a change of the credits (ms).
        self._op_ttl = max(120_000, 4 * self._lease_ms)
        # Give-backs of reservations given up on, running in the background.
        self._background: set[asyncio.Task[None]] = set()
        # Our own pauses hold always (even when Redis forgot them); the local rate cap applies
        # to polls while Redis cannot be reached.
        self._own_pause = Limiter(max_concurrency=None)
        self._local = Limiter(
            max_concurrency=None, max_requests_per_second=max_requests_per_second, burst=burst
        )
        self._outage_until = 0.0
        self._no_pause_at = -math.inf
        self._outage_backoff = min(OUTAGE_BACKOFF, self.lease_seconds / 6)
        self._reasserting = asyncio.Lock()
        parts = urllib.parse.urlsplit(url)
        self._secrets = [
            value
            for value in (
                parts.password,
                *(v for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() == "password"),
            )
            if value
        ]
        self._client: redis.asyncio.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._waiting: dict[str, _Waiter] = {}
        self._dropped: list[str] = []
        # Leases given back while Redis could not be reached, to remove from it when it can.
        self._unreleased: list[str] = []
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False
        #: Requests sent to Redis by this process (scripts, subscriptions), for measurements.
        self.requests_sent = 0

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.RedisLimiter(url={self._shown_url!r}, name={self.name!r}, "
            f"max_concurrency={self._max_concurrency!r}, "
            f"max_requests_per_second={self.max_requests_per_second!r}, "
            f"lease_seconds={self.lease_seconds!r}, held={len(self._held)})"
        )

    @property
    def max_concurrency(self) -> int | None:
        """Generations allowed in flight at once over all processes, or None for no limit."""
        return self._max_concurrency

    @property
    def url(self) -> str:
        """The Redis URL, without its password."""
        return self._shown_url

    @property
    def held(self) -> int:
        """How many slots this process holds now."""
        return len(self._held)

    async def __aenter__(self) -> RedisLimiter:
        """Return the limiter; `aclose()` runs on exit."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the limiter."""
        await self.aclose()

    async def aclose(self) -> None:
        """Stop waiting, give back the slots still held (best effort) and close the connections."""
        if self._closed:
            return
        if self._background:
            # Let the give-backs of abandoned reservations reach Redis (they time out on their own).
            await asyncio.wait(list(self._background), timeout=10.0)
            for leftover in list(self._background):
                leftover.cancel()
        self._closed = True
        for waiter in list(self._waiting.values()):
            if not waiter.future.done():
                waiter.future.set_exception(ClientClosedError("the limiter is closed"))
        for job in (self._dispatcher, self._listener, self._keeper):
            if job is not None and not job.done():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job
        tokens = [*self._held, *self._waiting, *self._dropped, *self._unreleased]
        self._held.clear()
        self._waiting.clear()
        self._dropped.clear()
        self._unreleased.clear()
        if self._client is not None:
            if tokens:
                with contextlib.suppress(Exception):
                    await self._scripts["release"](
                        keys=self._release_keys(),
                        args=[self._channel, *tokens],
                        client=self._client,
                    )
            await self._client.aclose(close_connection_pool=True)
            self._client = None

    # --- the store --------------------------------------------------------------------------------

    def _redis(self) -> redis.asyncio.Redis:
        if self._closed:
            raise ClientClosedError("the limiter is closed")
        if self._client is None:
            import redis.asyncio
            import redis.asyncio.retry
            import redis.backoff
            import redis.exceptions

            # A few connections serve every task of the process: callers queue for one (a
            # pub/sub subscription holds one of them while acquirers wait).
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self._url,
                max_connections=MAX_CONNECTIONS,
                timeout=5.0,
                decode_responses=True,
                socket_connect_timeout=2.0,
                socket_timeout=5.0,
                # A pooled connection that died with a restarted server is retried at once on a
                # fresh one; a script whose answer was lost may run twice, which they all allow
                # (the credit scripts through their op keys, acquire by answering the slots a
                # waiter already holds; a rate token may be taken twice: a slower rate only).
                retry=redis.asyncio.retry.Retry(
                    redis.backoff.ExponentialBackoff(cap=0.25, base=0.02),
                    2,
                    supported_errors=(redis.exceptions.ConnectionError,),
                ),
            )
            self._client = redis.asyncio.Redis(connection_pool=pool)
            for name, source in (
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("reassert", _REASSERT),
                ("release", _RELEASE),
                ("ready", _READY),
                ("pause", _PAUSE),
                ("credits", _CREDITS),
                ("give_back", _GIVE_BACK),
            ):
                self._scripts[name] = self._client.register_script(source)
        return self._client

    def _unavailable(self, exc: BaseException) -> LimiterUnavailableError:
        detail = str(exc)
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return LimiterUnavailableError(
            f"cannot reach Redis at {self._shown_url} ({type(exc).__name__}: {detail}); "
            "nothing was sent"
        )

    def _release_keys(self) -> list[str]:
        return [self._leases, self._queue, self._beats]

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        client = self._redis()
        self.requests_sent += 1
        try:
            return await self._scripts[script](keys=keys, args=args, client=client)
        except Exception as exc:
            if _is_store_error(exc):
                self._outage_until = time.monotonic() + self._outage_backoff
                raise self._unavailable(exc) from exc
            raise

    async def _call(
        self, script: str, keys: Sequence[str], extra: Sequence[str | int]
    ) -> list[Any]:
        """Run a script that checks the epoch, re-asserting what we hold when the store changed."""
        return (await self._call_in(script, keys, extra))[1]

    async def _call_in(
        self, script: str, keys: Sequence[str], extra: Sequence[str | int]
    ) -> tuple[str, list[Any]]:
        """Like `_call`, and also return the epoch the script ran in."""
        for _ in range(3):
            fresh = os.urandom(16).hex()
            epoch = self._epoch
            answer = await self._run(script, keys, [epoch, fresh, self._lease_ms, *extra])
            if answer[0] != "epoch":
                return epoch, list(answer)
            await self._reassert(str(answer[1]))
        raise LimiterUnavailableError(
            f"the Redis store at {self._shown_url} keeps changing its epoch; nothing was sent"
        )

    async def _reassert(self, epoch: str) -> None:
        async with self._reasserting:
            if self._epoch != epoch:
                await self._adopt(epoch)

    async def _adopt(self, epoch: str) -> None:
        if self._epoch and (self._held or self._committed):
            logger.warning(
                "Redis at %s lost the limiter's state (restart or flush): re-asserting %d "
                "slot(s) and %d credit(s) of this process",
                self._shown_url,
                len(self._held),
                self._committed,
            )
        if self._held or self._committed:
            maximum = self._max_concurrency if self._max_concurrency is not None else 2**31
            answer = await self._run(
                "reassert",
                [self._meta, self._leases, self._op_key(os.urandom(8).hex())],
                [
                    epoch,
                    self._lease_ms,
                    maximum,
                    max(0, self._committed),
                    self._op_ttl,
                    *self._held,
                ],
            )
            if answer[0] == "epoch":
                return  # changed again meanwhile: the caller's retry reports it
            self._report_lost(answer[1:])
            now = time.monotonic()
            for token in self._held:
                self._held[token] = now
        self._epoch = epoch

    def _op_key(self, op: str) -> str:
        return f"{self._meta[: -len('meta')]}op:{op}"

    def _report_lost(self, lost: Sequence[str]) -> None:
        if lost:
            logger.warning(
                "%d slot(s) of this process lapsed in Redis at %s and were taken by others "
                "(was the event loop blocked for longer than lease_seconds?); their tasks go on",
                len(lost),
                self._shown_url,
            )

    # --- slots ------------------------------------------------------------------------------------

    async def acquire(self) -> Lease:
        """Wait (in arrival order over all processes) for a slot and return its lease.

        Raises:
            LimiterUnavailableError: Redis cannot be reached; nothing may be sent.
        """
        if self._closed:
            raise ClientClosedError("the limiter is closed")
        token = f"{self._process}-{next(self._counter)}"
        if self._max_concurrency is None:
            return Lease(token)
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiting[token] = _Waiter(token, future)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        else:
            self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Granted while we were being cancelled: give it straight back.
                await self.release(future.result())
            elif self._waiting.pop(token, None) is not None:
                self._dropped.append(token)
                self._wake.set()
            raise

    async def _dispatch(self) -> None:
        """Ask Redis for slots on behalf of every local waiter, until none is left."""
        self._start_listener()
        try:
            while True:
                while self._waiting:
                    if not await self._dispatch_round():
                        return
                await self._flush_releases()
                # No await between this check and the end: a new waiter starts a new dispatcher.
                if not self._waiting:
                    return
        finally:
            self._stop_listener()

    async def _dispatch_round(self) -> bool:
        """Ask once for the first window of local waiters; False when Redis failed them all."""
        self._wake.clear()
        # At most one window of local waiters queues in Redis: the rest follow in order.
        waiters = list(itertools.islice(self._waiting, self._window))
        maximum = self._max_concurrency if self._max_concurrency is not None else 2**31
        try:
            answer = await self._call(
                "acquire",
                [self._meta, self._leases, self._queue, self._beats],
                [maximum, round(self._waiter_ttl * 1000), self._channel, *waiters],
            )
        except Exception as exc:
            # Fail closed: every create waiting here is abandoned unsent.
            error = exc
            if not isinstance(exc, (LimiterUnavailableError, ClientClosedError)):
                error = self._unavailable(exc)
            for waiter in list(self._waiting.values()):
                if not waiter.future.done():
                    waiter.future.set_exception(error)
            # Their places in the queue (and any slot granted unseen) go when Redis is back.
            self._unreleased.extend(self._waiting)
            del self._unreleased[:-MAX_UNRELEASED]
            self._waiting.clear()
            return False
        next_ms = int(answer[1])
        granted = [str(token) for token in answer[2:]]
        now = time.monotonic()
        for token in granted:
            found = self._waiting.pop(token, None)
            if found is None or found.future.done():
                self._dropped.append(token)  # its caller gave up meanwhile
                continue
            self._held[token] = now
            found.future.set_result(Lease(token))
        if granted:
            self._start_keeper()
        await self._flush_releases()
        if self._waiting:
            timeout = min(self._heartbeat, max(next_ms, 1) / 1000 + 0.005)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        return True

    async def _flush_releases(self) -> None:
        """Remove from Redis the waiters that gave up and the slots it could not take back."""
        tokens = [*self._dropped, *self._unreleased]
        if not tokens:
            return
        self._dropped.clear()
        self._unreleased.clear()
        try:
            await self._release_tokens(tokens)
        except Exception:
            self._unreleased.extend(tokens)

    def _start_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def _stop_listener(self) -> None:
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()
        self._listener = None

    async def _listen(self) -> None:
        """Wake the dispatcher at each message on the channel; reconnect quietly on errors."""
        while True:
            try:
                pubsub = self._redis().pubsub()
            except ClientClosedError:
                return
            try:
                self.requests_sent += 1
                await pubsub.subscribe(self._channel)
                # A release may have come before the subscription: look once more.
                self._wake.set()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._heartbeat * 4
                    )
                    if message is not None:
                        self._wake.set()
            except Exception:
                await asyncio.sleep(self._heartbeat)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    async def release(self, lease: Lease) -> None:
        """Give a slot back and wake the waiters; never raises (an unreachable slot lapses)."""
        if self._held.pop(lease.token, None) is None:
            return
        if not self._keeping():
            self._stop_keeper()
        tokens = [*self._unreleased, lease.token]
        self._unreleased.clear()
        try:
            await self._release_tokens(tokens)
        except Exception as exc:
            # Given back at the next release that reaches Redis, else it lapses on its own.
            self._unreleased.extend(tokens)
            del self._unreleased[:-MAX_UNRELEASED]
            logger.warning(
                "could not release a slot in Redis at %s (%s); it lapses in %.0f s",
                self._shown_url,
                type(exc).__name__,
                self.lease_seconds,
            )

    async def _release_tokens(self, tokens: Sequence[str]) -> None:
        if self._closed:
            return
        await self._run("release", self._release_keys(), [self._channel, *tokens])

    async def renew(self, lease: Lease) -> None:
        """Keep a lease alive: refresh it in Redis when a third of its time has passed.

        The keeper of this process refreshes every lease it holds as often; never raises.
        """
        pushed = self._held.get(lease.token)
        if pushed is None:
            return
        self._start_keeper()
        if time.monotonic() - pushed >= self.lease_seconds / 3:
            await self._renew_tokens([lease.token])

    async def _renew_tokens(self, tokens: Sequence[str]) -> None:
        if time.monotonic() < self._outage_until:
            return
        maximum = self._max_concurrency if self._max_concurrency is not None else 2**31
        try:
            answer = await self._call("renew", [self._meta, self._leases], [maximum, *tokens])
        except Exception as exc:
            logger.debug("renewing leases in Redis failed: %r", exc)
            return
        self._report_lost([str(token) for token in answer[1:]])
        now = time.monotonic()
        for token in tokens:
            if token in self._held:
                self._held[token] = now

    def _keeping(self) -> bool:
        """Whether the keeper must run: this process holds slots or credits."""
        return bool(self._held) or self._committed > 0

    def _start_keeper(self) -> None:
        if self._closed:
            return
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    def _stop_keeper(self) -> None:
        if self._keeper is not None and not self._keeper.done():
            self._keeper.cancel()
        self._keeper = None

    async def _keep(self) -> None:
        """Every third of a lease time, while this process holds slots or credits, refresh its
        leases and check the epoch (a new store learns of them within its grace)."""
        while self._keeping():
            await asyncio.sleep(self.lease_seconds / 3)
            due = time.monotonic() - self.lease_seconds / 3 + 0.05
            stale = [token for token, pushed in self._held.items() if pushed <= due]
            if stale or self._committed > 0:
                await self._renew_tokens(stale)

    # --- pauses, rate and budget ------------------------------------------------------------------

    async def pause(self, seconds: float) -> None:
        """Hold every request of the key, in every process, for *seconds*; never raises."""
        await self._own_pause.pause(seconds)
        self._no_pause_at = -math.inf
        if seconds <= 0:
            return
        try:
            await self._run("pause", [self._meta], [max(1, math.ceil(seconds * 1000))])
        except Exception as exc:
            logger.warning(
                "could not share a pause through Redis at %s (%s); pausing this process only",
                self._shown_url,
                type(exc).__name__,
            )

    async def ready(self, kind: RequestKind = "create") -> None:
        """Wait for the shared pause and a token of the shared rate bucket.

        Without a rate cap, a poll within `POLL_PAUSE_RECHECK` seconds of a check that found no
        pause leaves without asking Redis again (a pause reaches polls that much later).

        Raises:
            LimiterUnavailableError: Redis cannot be reached and *kind* is ``"create"``. For a
                poll it never raises: local limits apply instead.
        """
        rate = "" if self.max_requests_per_second is None else repr(self.max_requests_per_second)
        while True:
            # Our own pauses hold even when Redis forgot them (a restart).
            await self._own_pause.ready(kind)
            if kind == "poll":
                now = time.monotonic()
                if now < self._outage_until:
                    await self._local.ready(kind)
                    return
                if not rate and now - self._no_pause_at < POLL_PAUSE_RECHECK:
                    return
            try:
                answer = await self._call("ready", [self._meta], [rate, self.burst])
            except Exception as exc:
                if kind != "poll":
                    if isinstance(exc, LimiterUnavailableError):
                        raise
                    raise self._unavailable(exc) from exc
                logger.debug("Redis unavailable for a poll's check, local limits apply: %r", exc)
                await self._local.ready(kind)
                return
            wait_ms = int(answer[1])
            if wait_ms <= 0:
                self._no_pause_at = time.monotonic()
                return
            await asyncio.sleep(wait_ms / 1000)

    async def reserve(self, credits: int) -> None:
        """Reserve *credits* of the shared budget for a create about to be sent.

        In the grace of a new store (see the class), it waits for the grace to end. A reservation
        whose reply was lost, or whose caller was cancelled meanwhile, is given back.

        Raises:
            BudgetExceededError: They would pass the budget; nothing is reserved.
            LimiterUnavailableError: Redis cannot be reached.
        """
        if self.max_credits is None:
            return
        op = os.urandom(8).hex()
        try:
            while True:
                epoch, answer = await self._call_in(
                    "credits",
                    [self._meta, self._op_key(op)],
                    [credits, self.max_credits, self._op_ttl],
                )
                if answer[0] != "wait":
                    break
                await asyncio.sleep(max(int(answer[1]), 1) / 1000)
            if answer[0] == "ok":
                await self._settled_store()
        except BaseException as exc:
            self._give_back(op, credits)
            if isinstance(exc, Exception) and not isinstance(
                exc, (LimiterUnavailableError, ClientClosedError)
            ):
                raise self._unavailable(exc) from exc
            raise
        if answer[0] == "over":
            raise BudgetExceededError(credits, int(answer[1]), self.max_credits)
        if answer[0] != "ok":
            self._give_back(op, credits)
            raise LimiterUnavailableError(
                f"Redis at {self._shown_url} answered {answer[0]!r} to a reservation; "
                "nothing was sent"
            )
        self._count(credits, epoch)

    async def settle(self, reserved: int, charged: int) -> None:
        """Turn a reservation of *reserved* into a charge of *charged*; never raises."""
        await self._adjust(charged - reserved)

    async def refund(self, credits: int) -> None:
        """Give *credits* of a failed task back to the shared budget; never raises."""
        await self._adjust(-credits)

    async def _adjust(self, delta: int) -> None:
        if self.max_credits is None or delta == 0:
            return
        op = os.urandom(8).hex()
        try:
            # A re-assertion inside this call (a new store) counts what we held before delta.
            epoch, _ = await self._call_in(
                "credits", [self._meta, self._op_key(op)], [delta, "", self._op_ttl]
            )
            await self._settled_store()
        except BaseException as exc:
            # Not known to have reached Redis (failed, or cancelled): Redis keeps the larger
            # figure, and so do we (re-asserted after a restart): the budget errs on the side of
            # spending less.
            if delta > 0:
                self._committed += delta
                self._start_keeper()
            if not isinstance(exc, Exception):
                raise
            logger.warning(
                "could not update the shared budget in Redis at %s by %+d (%s)",
                self._shown_url,
                delta,
                type(exc).__name__,
            )
            return
        self._count(delta, epoch)

    async def _settled_store(self) -> None:
        """Wait until no re-assertion is under way (one may be counting our credits already)."""
        if self._reasserting.locked():
            async with self._reasserting:
                pass

    def _count(self, delta: int, epoch: str) -> None:
        """Count *delta*, added to the store of *epoch*, as this process's."""
        self._committed += delta
        if self._keeping():
            self._start_keeper()
        if epoch != self._epoch and not self._closed:
            # The store changed while our change was under way, and this process re-asserted
            # its credits into the new one without it: add it there too.
            self._spawn(self._add_to_current(delta))

    async def _add_to_current(self, delta: int) -> None:
        epoch = self._epoch
        try:
            await self._run(
                "credits",
                [self._meta, self._op_key(os.urandom(8).hex())],
                [epoch, os.urandom(16).hex(), self._lease_ms, delta, "", self._op_ttl],
            )
            # An answer {"epoch", ...}: the next re-assertion counts delta with the rest.
        except Exception as exc:
            logger.warning(
                "could not carry %+d credit(s) over to the new store at %s (%s)",
                delta,
                self._shown_url,
                type(exc).__name__,
            )

    def _give_back(self, op: str, credits: int) -> None:
        """Take back, in the background, a reservation whose caller gave up on it."""
        if self._closed:
            return
        self._spawn(self._run_give_back(op, credits))

    async def _run_give_back(self, op: str, credits: int) -> None:
        try:
            await self._run("give_back", [self._meta, self._op_key(op)], [credits, self._op_ttl])
        except Exception as exc:
            logger.warning(
                "could not give back an abandoned reservation of %d credit(s) to Redis at %s "
                "(%s); the budget may count it",
                credits,
                self._shown_url,
                type(exc).__name__,
            )

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _is_store_error(exc: BaseException) -> bool:
    if isinstance(exc, _STORE_ERRORS):
        return True
    import redis.exceptions

    return isinstance(exc, redis.exceptions.RedisError)
