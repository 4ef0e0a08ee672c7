"""`TaskHost`: the one anyio task group a `Client` owns, and everything it runs in the background.

A client is opened lazily (its first call binds it to the running event loop) and may be closed
from another task than the one that opened it, so its task group cannot live on the caller's
stack. One host task, started when the client opens, enters the group and keeps it open;
`aclose()` cancels the group and waits for the host, so nothing the client started outlives it.
If the event loop ends with the client still open (`asyncio.run` cancels what is left), the host
is cancelled with it and runs the client's last cleanup on its way out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

logger = logging.getLogger("nanobanana_async")
T = TypeVar("T")

#: How long closing waits for bookkeeping that must finish (a shared limiter's give-backs).
SETTLE_GRACE = 10.0


class TaskHost:
    """Hosts one anyio task group for an object opened lazily and closed from any task."""

    def __init__(
        self, name: str, *, on_loop_end: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._name = name
        self._on_loop_end = on_loop_end
        self._group: TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._pending: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...], str]] = []
        self._late: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []
        self._up = asyncio.Event()
        self._closing = False

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the host task on *loop* (once)."""
        if self._host is None and not self._closing:
            # The one raw task of the client: it hosts the task group everything else runs in.
            self._host = loop.create_task(self._run(), name=f"{self._name}-host")

    async def started(self) -> None:
        """Return once the group is open (at once if it is, or if the host is closing)."""
        if not self._up.is_set() and not self._closing:
            await self._up.wait()

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any, name: str = "") -> bool:
        """Run ``func(*args)`` in the group; an error it raises is logged, never spread.

        Returns False, and starts nothing, once closing has begun: the caller must then do
        without (e.g. give a held slot back at once).
        """
        if self._closing or (self._group is not None and self._group.cancel_scope.cancel_called):
            return False
        if self._group is None:
            self._pending.append((func, args, name))
        else:
            self._group.start_soon(_guarded, func, args, name=name or None)
        return True

    def start_settle(self, func: Callable[..., Awaitable[Any]], *args: Any, name: str = "") -> None:
        """Like `start_soon`, for bookkeeping that must finish even while the group closes.

        The work runs shielded from the group's cancellation for at most `SETTLE_GRACE` seconds,
        so closing waits for a shared limiter to hear of a give-back. Started after the group
        closed, it is run by the caller of `aclose` (see `aclose`).
        """
        if self._group is None or self._group.cancel_scope.cancel_called:
            self._late.append((func, args))
            return
        self._group.start_soon(_shielded, func, args, name=name or None)

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                pending, self._pending = self._pending, []
                for func, args, name in pending:
                    group.start_soon(_guarded, func, args, name=name or None)
                self._up.set()
                await anyio.sleep_forever()
        except asyncio.CancelledError:
            if not self._closing and self._on_loop_end is not None:
                # Not aclose(): the event loop is shutting down with the owner still open.
                self._closing = True
                await self._on_loop_end()
            raise
        finally:
            self._up.set()

    async def aclose(self) -> None:
        """Cancel the group, wait until every task in it has ended, then run late settles."""
        self._closing = True
        host = self._host
        if host is not None:
            group = self._group
            if group is not None:
                group.cancel_scope.cancel()
            else:
                host.cancel()
            await asyncio.gather(host, return_exceptions=True)
        late, self._late = self._late, []
        for func, args in late:
            await _shielded(func, args)


async def run_to_end(work: Awaitable[T]) -> T:
    """Await *work* to its end even if the caller is cancelled meanwhile; then re-raise that.

    (An anyio shield does not stop a plain `Task.cancel()` on asyncio; this does.)
    """
    # Its own task only if it is not one already: it must outlive the caller's cancellation.
    job = asyncio.ensure_future(work)
    interrupted = False
    while not job.done():
        try:
            await asyncio.wait((job,))
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    return job.result()


async def _guarded(func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
    try:
        await func(*args)
    except Exception:
        # A bug in background work must not cancel the rest of the client's work.
        logger.exception("background work of the client failed")


async def _shielded(func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
    # Shielded: a shared limiter must hear of a give-back even while the client closes (bounded).
    with anyio.move_on_after(SETTLE_GRACE, shield=True) as scope:
        await _guarded(func, args)
    if scope.cancelled_caught:
        logger.warning("gave up waiting for the limiter after %.0f s while closing", SETTLE_GRACE)
