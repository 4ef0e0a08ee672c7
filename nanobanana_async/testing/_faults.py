"""Fault injection: make the emulator misbehave the ways real services and proxies do."""

from __future__ import annotations

import random
from typing import Literal

import attrs

__all__ = ["Fault", "FaultEndpoint", "FaultHandle", "FaultInjector"]

FaultEndpoint = Literal["create", "result", "file", "any"]
_ENDPOINTS = ("create", "result", "file", "any")


@attrs.frozen
class Fault:
    """A way to misbehave, built with one of the class methods.

    Attributes:
        name: The kind of fault, as recorded in ``RequestRecord.fault``.
        http_status: Status answered, for the kinds that answer.
        retry_after: Seconds advertised in ``Retry-After``, if any.
        http_date: Send ``Retry-After`` as an HTTP date instead of seconds.
        hint_in_body: Also put ``"retry_after"`` in the error body.
        seconds: Real seconds to wait, for ``delay``.
    """

    name: str
    http_status: int | None = None
    retry_after: float | None = None
    http_date: bool = False
    hint_in_body: bool = False
    seconds: float | None = None

    @classmethod
    def status(cls, code: int, retry_after: float | None = None) -> Fault:
        """Answer ``code`` (e.g. 500, 503) before processing; nothing is charged."""
        if not 100 <= code <= 599:
            raise ValueError(f"code must be an HTTP status, not {code!r}")
        _check_retry_after(retry_after)
        return cls("status", http_status=code, retry_after=retry_after)

    @classmethod
    def rate_limit(
        cls,
        retry_after: float | None = 1.0,
        http_date: bool = False,
        hint_in_body: bool = False,
    ) -> Fault:
        """Answer 429 before processing, with ``Retry-After`` unless ``retry_after`` is None.

        Args:
            retry_after: Seconds to advertise; whole numbers are sent as integers.
            http_date: Send the header as an HTTP date (rounded up to the second).
            hint_in_body: Add ``"retry_after": N`` to the error body.
        """
        _check_retry_after(retry_after)
        return cls(
            "rate_limit",
            http_status=429,
            retry_after=retry_after,
            http_date=http_date,
            hint_in_body=hint_in_body,
        )

    @classmethod
    def drop_before(cls) -> Fault:
        """Close the connection before processing: nothing charged, no task."""
        return cls("drop_before")

    @classmethod
    def drop_after(cls) -> Fault:
        """Process fully (a create charges and creates its task), then close without answering."""
        return cls("drop_after")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds`` of real time, then process and answer normally."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, not {seconds!r}")
        return cls("delay", seconds=seconds)

    @classmethod
    def hang(cls) -> Fault:
        """Never answer nor process; the connection closes when the emulator does."""
        return cls("hang")

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """Answer a proxy-like HTML error page without processing."""
        return cls("html", http_status=status)

    @classmethod
    def malformed(cls, status: int = 200) -> Fault:
        """Answer a truncated JSON body without processing (a create charges nothing)."""
        return cls("malformed", http_status=status)

    @classmethod
    def envelope(cls) -> Fault:
        """Process normally but wrap a success as ``{"code": 0, "msg": "success", "data": ...}``."""
        return cls("envelope")

    @classmethod
    def insufficient_credits_200(cls) -> Fault:
        """Answer HTTP 200 ``{"code": -1, "msg": "insufficient credits"}`` without processing."""
        return cls("insufficient_credits_200", http_status=200)


def _check_retry_after(retry_after: float | None) -> None:
    if retry_after is not None and retry_after < 0:
        raise ValueError(f"retry_after must be >= 0, not {retry_after!r}")


@attrs.define(eq=False, repr=False)
class FaultHandle:
    """One injection: which fault, where, how often, and how many times it fired."""

    _fault: Fault
    _endpoint: FaultEndpoint
    _times: int | None
    _rate: float | None
    _rng: random.Random = attrs.field(repr=False)
    _injector: FaultInjector = attrs.field(repr=False)
    _fired: int = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fault={self._fault!r}, endpoint={self._endpoint!r}, "
            f"times={self._times!r}, rate={self._rate!r}, fired={self._fired!r})"
        )

    @property
    def fault(self) -> Fault:
        """The injected fault."""
        return self._fault

    @property
    def endpoint(self) -> FaultEndpoint:
        """The endpoint it applies to (``any`` for every request)."""
        return self._endpoint

    @property
    def fired(self) -> int:
        """How many requests this injection affected."""
        return self._fired

    @property
    def active(self) -> bool:
        """Whether it can still fire (not removed, ``times`` not used up)."""
        return self._injector.holds(self) and (self._times is None or self._fired < self._times)

    def remove(self) -> None:
        """Stop injecting; ``fired`` keeps its count. Removing twice is harmless."""
        self._injector.discard(self)

    def _try(self, endpoint: str) -> bool:
        if self._endpoint not in ("any", endpoint):
            return False
        if self._times is not None and self._fired >= self._times:
            return False
        # The draw happens only for matching requests so a seed replays identically.
        if self._rate is not None and self._rng.random() >= self._rate:
            return False
        self._fired += 1
        return True


@attrs.define(eq=False, repr=False)
class FaultInjector:
    """Switches faults on and off per endpoint; reached as ``Emulator.faults``."""

    _seed: int
    _handles: list[FaultHandle] = attrs.field(factory=list)
    _injected: int = 0
    _fired_total: int = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(active={self._handles!r}, fired_total={self._fired_total})"

    @property
    def fired_total(self) -> int:
        """How many requests any injection affected, removed ones included."""
        return self._fired_total

    def inject(
        self,
        fault: Fault,
        *,
        endpoint: FaultEndpoint = "any",
        times: int | None = None,
        rate: float | None = None,
    ) -> FaultHandle:
        """Apply ``fault`` to matching requests until removed.

        Earlier injections take precedence; a request gets at most one fault.

        Args:
            fault: What to do.
            endpoint: ``create``, ``result``, ``file`` or ``any`` (every request).
            times: Fire at most this many times; None for no limit.
            rate: Probability of firing for each matching request (seeded); None for always.
        """
        if endpoint not in _ENDPOINTS:
            raise ValueError(f"endpoint must be one of {_ENDPOINTS}, not {endpoint!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, not {times!r}")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, not {rate!r}")
        self._injected += 1
        handle = FaultHandle(
            fault,
            endpoint,
            times,
            rate,
            random.Random(f"{self._seed}:{self._injected}"),
            self,
        )
        self._handles.append(handle)
        return handle

    def clear(self) -> None:
        """Remove every injection."""
        self._handles.clear()

    def holds(self, handle: FaultHandle) -> bool:
        """Whether *handle* is still injected (not removed)."""
        return handle in self._handles

    def discard(self, handle: FaultHandle) -> None:
        """Remove *handle*'s injection, if it is still there."""
        if handle in self._handles:
            self._handles.remove(handle)

    def pick(self, endpoint: str) -> Fault | None:
        """Return the fault the next request on *endpoint* meets, and count it (emulator use)."""
        for handle in self._handles:
            if handle._try(endpoint):
                self._fired_total += 1
                return handle.fault
        return None
