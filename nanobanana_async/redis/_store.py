"""The connection to Redis of one `RedisLimiter`: its client, its scripts, its keys and errors."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import ClientClosedError, InvalidRequestError, LimiterUnavailableError
from . import _scripts

if TYPE_CHECKING:
    import redis.asyncio
    from redis.commands.core import AsyncScript

#: Connections to Redis of one limiter at most (when it opens them from a URL).
MAX_CONNECTIONS = 16
#: How long a store that failed is not asked again by the calls that must never fail (seconds).
OUTAGE_BACKOFF = 1.0

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


def _text(value: Any) -> Any:
    """An answer as text, whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


def _is_store_error(exc: BaseException) -> bool:
    if isinstance(exc, _STORE_ERRORS):
        return True
    import redis.exceptions

    return isinstance(exc, redis.exceptions.RedisError)


def _is_cluster_error(exc: BaseException) -> bool:
    """Whether *exc* is a cluster's redirection or state error (MOVED, ASK, CLUSTERDOWN...)."""
    import redis.exceptions

    return isinstance(
        exc,
        (
            redis.exceptions.AskError,  # MovedError too
            redis.exceptions.ClusterDownError,
            redis.exceptions.ClusterCrossSlotError,
            redis.exceptions.TryAgainError,
        ),
    )


def _describe(client: Any) -> str:
    """Where a client object connects, for messages (no password)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    if "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    if "service_name" in kwargs or type(pool).__name__.startswith("Sentinel"):
        return f"sentinel master {getattr(pool, 'service_name', '?')}"
    nodes = getattr(client, "get_nodes", None)
    if nodes is not None:
        return "redis cluster " + ",".join(node.name for node in nodes()[:3])
    return f"<{type(client).__name__}>"


class Store:
    """One limiter's connection to Redis: runs the scripts on the keys of one name.

    Args:
        target: A ``redis://``, ``rediss://`` or ``unix://`` URL (the store opens and closes its
            own connections), or a `redis.asyncio` client (``Redis``, ``RedisCluster``, a Sentinel
            master), which stays its owner's to close.
        name: The name whose keys to use.
    """

    def __init__(self, target: object, name: str) -> None:
        try:
            import redis.asyncio
        except ImportError as exc:
            raise LimiterUnavailableError(
                "RedisLimiter needs the redis package: pip install 'nanobanana-async[redis]'"
            ) from exc
        self._secrets: list[str] = []
        self._url: str | None = None
        self._client: Any = None
        if isinstance(target, str):
            if urllib.parse.urlsplit(target).scheme not in ("redis", "rediss", "unix"):
                raise InvalidRequestError(
                    "url", "must be a redis://, rediss:// or unix:// URL, or a redis.asyncio client"
                )
            self._url = target
            self.shown = redact_url(target)
            parts = urllib.parse.urlsplit(target)
            self._secrets = [
                value
                for value in (
                    parts.password,
                    *(v for k, v in urllib.parse.parse_qsl(parts.query) if k.lower() == "password"),
                )
                if value
            ]
        elif isinstance(target, (redis.asyncio.Redis, redis.asyncio.RedisCluster)):
            self._client = target
            self.shown = _describe(target)
            password = getattr(getattr(target, "connection_pool", None), "connection_kwargs", {})
            if isinstance(password, dict) and password.get("password"):
                self._secrets = [str(password["password"])]
        else:
            raise InvalidRequestError(
                "url", "must be a redis://, rediss:// or unix:// URL, or a redis.asyncio client"
            )
        self._owned = self._client is None
        prefix = f"nanobanana:{{{name}}}:"
        self.prefix = prefix
        self.channel = prefix + "wake"
        self.keys = [prefix + part for part in ("meta", "leases", "queue", "beats", "procs")]
        self.keys += [prefix + "resv", prefix + "op:-"]
        self._scripts: dict[str, AsyncScript] = {}
        self.closed = False
        #: Until when (monotonic) the calls that must never fail skip the store after a failure.
        self.outage_until = 0.0
        self.outage_backoff = OUTAGE_BACKOFF
        #: Requests sent to Redis (scripts, subscriptions), for measurements.
        self.requests_sent = 0

    @property
    def opened(self) -> bool:
        """Whether a client is at hand (opened from the URL, or given)."""
        return self._client is not None

    def op_keys(self, op: str) -> list[str]:
        """The keys of a script that records its answer under the op id *op*."""
        return [*self.keys[:6], f"{self.prefix}op:{op}"]

    def client(self) -> redis.asyncio.Redis:
        """The redis client (opened at first use from a URL)."""
        if self.closed:
            raise ClientClosedError("the limiter is closed")
        if self._client is None:
            import redis.asyncio
            import redis.asyncio.retry
            import redis.backoff
            import redis.exceptions

            assert self._url is not None
            # A few connections serve every task of the process: callers queue for one (the
            # pub/sub listener holds one of them for the limiter's life).
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
        client: redis.asyncio.Redis = self._client
        return client

    def unavailable(self, exc: BaseException) -> LimiterUnavailableError:
        """The error that says the store cannot be reached, with no secret in it."""
        return LimiterUnavailableError(
            f"cannot reach Redis at {self.shown} ({type(exc).__name__}: {self._hide(str(exc))}); "
            "nothing was sent"
        )

    def _is_cluster_client(self) -> bool:
        import redis.asyncio

        return isinstance(self._client, redis.asyncio.RedisCluster)

    def not_a_cluster_client(self, exc: BaseException) -> LimiterUnavailableError:
        """The error that says the store is a Redis Cluster reached without a cluster client."""
        return LimiterUnavailableError(
            f"Redis at {self.shown} is a node of a Redis Cluster ({type(exc).__name__}: "
            f"{self._hide(str(exc))}): pass a redis.asyncio.RedisCluster client instead of a "
            "URL or a plain Redis client; nothing was sent"
        )

    def _hide(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def run(
        self, script: str, args: Sequence[str | int], keys: Sequence[str] | None = None
    ) -> Any:
        """Run *script* on this name's keys; raise `LimiterUnavailableError` if Redis fails."""
        client = self.client()
        found = self._scripts.get(script)
        if found is None:
            found = self._scripts[script] = client.register_script(_scripts.ALL[script])
        self.requests_sent += 1
        try:
            return _text(await found(keys=keys or self.keys, args=args, client=client))
        except Exception as exc:
            if _is_cluster_error(exc) and not self._is_cluster_client():
                raise self.not_a_cluster_client(exc) from exc
            if _is_store_error(exc):
                self.outage_until = time.monotonic() + self.outage_backoff
                raise self.unavailable(exc) from exc
            raise

    async def aclose(self) -> None:
        """Close the connections this store opened (a client given to it stays open)."""
        self.closed = True
        client, self._client = self._client, None
        if client is not None and self._owned:
            await client.aclose(close_connection_pool=True)
