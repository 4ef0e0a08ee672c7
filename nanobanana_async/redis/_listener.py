"""The pub/sub listener of a `RedisLimiter`: one subscription for the limiter's whole life.

It wakes the dispatcher at each message on the name's channel (a slot came free somewhere). It
runs in the limiter's task group, which `aclose()` cancels and awaits: redis-py may swallow one
cancellation inside `get_message`, but an anyio cancel scope cancels again at the next await.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import anyio

from ._store import Store

logger = logging.getLogger("nanobanana_async.redis")


class Listener:
    """Subscribes to the name's channel and calls *wake* at each message, reconnecting quietly.

    Args:
        store: The connection to use.
        wake: Called after each message, and after each (re)subscription.
        idle: The longest wait for a message before listening again (seconds).
    """

    def __init__(self, store: Store, wake: Callable[[], None], *, idle: float) -> None:
        self._store = store
        self._wake = wake
        self._idle = idle

    async def run(self) -> None:
        """Listen until cancelled (by the limiter's `aclose()`).

        With no pub/sub at hand (an asyncio ``RedisCluster`` before redis-py 8), say so once at
        WARNING and return: the waiters then ask Redis again on their own, about once a second.
        """
        while True:
            try:
                client = self._store.client()
                if not hasattr(client, "pubsub"):
                    import redis

                    logger.warning(
                        "redis-py %s has no pub/sub for %s (an asyncio RedisCluster has it from "
                        "redis-py 8): waiting creates ask Redis again every %.1f s instead of "
                        "being woken when a slot comes free",
                        getattr(redis, "__version__", "?"),
                        type(client).__name__,
                        self._idle / 4,
                    )
                    return
                pubsub = client.pubsub()
            except Exception as exc:
                logger.debug("no pub/sub connection to Redis: %r", exc)
                await anyio.sleep(self._idle)
                continue
            try:
                self._store.requests_sent += 1
                await pubsub.subscribe(self._store.channel)
                # A release may have come before the subscription: look once more.
                self._wake()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._idle
                    )
                    if message is not None:
                        self._wake()
            except Exception as exc:
                logger.debug("Redis pub/sub failed, subscribing again: %r", exc)
                await anyio.sleep(self._idle)
            finally:
                # Shielded (2 s at most): the pooled connection must go back even when cancelled.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
