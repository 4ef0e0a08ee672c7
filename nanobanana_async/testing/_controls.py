"""Hold and gate: let a test, not the machine's load, decide when things happen in the emulator.

A `Hold` hides the end of tasks from polls until released; a `Gate` keeps requests waiting at the
emulator's door until opened. Both are made by the emulator (`Emulator.hold()`,
`Emulator.gate()`), at any time, before or after it starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Literal

import attrs

__all__ = ["Gate", "GateEndpoint", "Hold", "matcher"]

GateEndpoint = Literal["create", "result", "file", "other", "any"]
_GATE_ENDPOINTS = ("create", "result", "file", "other", "any")
#: Default bound of `Gate.wait_until_waiting`, so a request that never comes fails the test.
DEFAULT_GATE_WAIT = 10.0


def matcher(which: str | Collection[str] | Callable[[str], bool]) -> Callable[[str], bool]:
    """Return a predicate of task ids from an id, a collection of ids, or a predicate."""
    if isinstance(which, str):
        return which.__eq__
    if callable(which):
        return which
    ids = frozenset(which)
    return ids.__contains__


@attrs.define(eq=False, repr=False)
class Hold:
    """Polls report held tasks as running (progress at most 99) after their end, until released.

    Made by `Emulator.hold()`. Only what polls say changes: creates, the ledger, the tasks'
    own timing and their files are untouched, so a released task reports its real end at once.
    Usable as a context manager that releases everything on exit.
    """

    _which: Callable[[str], bool] | None
    _holding: bool = True
    _released: list[Callable[[str], bool]] = attrs.field(factory=list)
    _hidden: set[str] = attrs.field(factory=set)

    def __repr__(self) -> str:
        state = "holding" if self._holding else "released"
        return f"{type(self).__name__}({state}, hidden={len(self._hidden)})"

    @property
    def hidden(self) -> frozenset[str]:
        """Ids of the tasks whose end a poll was not told, at least once."""
        return frozenset(self._hidden)

    def holds(self, task_id: str) -> bool:
        """Whether polls of *task_id* are held now."""
        if not self._holding or (self._which is not None and not self._which(task_id)):
            return False
        return not any(released(task_id) for released in self._released)

    def release(self, which: str | Collection[str] | Callable[[str], bool] | None = None) -> None:
        """Let tasks report their real status: an id, ids, the ids a predicate accepts, or all."""
        if which is None:
            self._holding = False
        else:
            self._released.append(matcher(which))

    def hide(self, task_id: str) -> bool:
        """Return whether a poll of *task_id* must hide its end, and note it (emulator use)."""
        if not self.holds(task_id):
            return False
        self._hidden.add(task_id)
        return True

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@attrs.define(eq=False, repr=False)
class Gate:
    """Requests to one endpoint wait at the emulator's door until the gate opens.

    Made by `Emulator.gate()`, closed. A waiting request has left the client but is neither
    processed nor recorded yet (a create is on the wire, not charged) for as long as the test
    wants. When the emulator closes, waiting requests are dropped. Usable as a context manager
    that opens the gate on exit.
    """

    _endpoint: GateEndpoint = attrs.field(validator=attrs.validators.in_(_GATE_ENDPOINTS))
    _open: asyncio.Event = attrs.field(factory=asyncio.Event)
    _waiting: int = 0
    _passed: int = 0
    _watchers: list[tuple[int, asyncio.Event]] = attrs.field(factory=list)

    def __repr__(self) -> str:
        state = "open" if self._open.is_set() else "closed"
        return (
            f"{type(self).__name__}({self._endpoint!r}, {state}, waiting={self._waiting}, "
            f"passed={self._passed})"
        )

    @property
    def endpoint(self) -> GateEndpoint:
        """The endpoint it stops (``any`` for every request)."""
        return self._endpoint

    @property
    def is_open(self) -> bool:
        """Whether requests go through now."""
        return self._open.is_set()

    @property
    def waiting(self) -> int:
        """Requests waiting at the gate now."""
        return self._waiting

    @property
    def passed(self) -> int:
        """Requests that went through the gate (including the ones that found it open)."""
        return self._passed

    def open(self) -> None:
        """Let the waiting requests, and every later one, through."""
        self._open.set()

    def close(self) -> None:
        """Stop later requests again (requests already let through go on)."""
        self._open.clear()

    async def wait_until_waiting(
        self, count: int = 1, *, timeout: float = DEFAULT_GATE_WAIT
    ) -> None:
        """Wait until at least *count* requests wait at the gate.

        Raises:
            TimeoutError: If fewer are waiting after *timeout* seconds (the message says so).
        """
        if self._waiting >= count:
            return
        arrived = asyncio.Event()
        watcher = (count, arrived)
        self._watchers.append(watcher)
        try:
            await asyncio.wait_for(arrived.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{self._waiting} request(s) waiting at the {self._endpoint} gate after "
                f"{timeout} s; expected {count}"
            ) from None
        finally:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    async def pass_through(self, endpoint: str, closing: asyncio.Event) -> bool:
        """Wait while the gate stops *endpoint*; False if *closing* is set first (emulator use)."""
        if self._endpoint not in ("any", endpoint):
            return True
        if not self._open.is_set():
            self._waiting += 1
            for count, arrived in self._watchers:
                if self._waiting >= count:
                    arrived.set()
            try:
                # Named: a test telling the emulator's tasks from the client's knows them by it.
                opened = asyncio.create_task(self._open.wait(), name="emulator-gate")
                closed = asyncio.create_task(closing.wait(), name="emulator-gate")
                try:
                    done, _ = await asyncio.wait(
                        (opened, closed), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    opened.cancel()
                    closed.cancel()
                # Opened counts even if closed again since: this request was let through.
                if opened not in done:
                    return False
            finally:
                self._waiting -= 1
        self._passed += 1
        return True

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open()
