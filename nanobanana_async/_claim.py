"""`Claim`: what one create holds before its task exists, with exactly one owner at a time.

A claim is the limiter slot, the rate token and the credit reservation of one create. The rate
token is spent at the limiter's gate right before the request leaves and is never given back; the
slot and the reservation move with the claim:

1. the submitting coroutine holds it from `reserve`/`acquire` until the first request bytes are
   about to be written (the transport's write hook hands it over);
2. the attempt holds it while the create is on the wire;
3. the `Task` holds it once a task id is read (its lease rides with the task until it ends).

Whoever holds the claim releases it, once: a hand-over or a release by anyone else is refused,
so a claim can neither leak (every holder releases in a ``finally``) nor be given back twice.
A create whose answer was lost (`SubmitUncertainError`) may be running on the server: its slot is
held on for the model's typical longest duration (see `uncertain_hold`) before it comes back. If
the client closes first, the limiter is asked to give it back when the hold ends
(`BaseLimiter.release_later`); a limiter that cannot gets it back at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import anyio

from ._credits import CreditLedger
from ._limiter import BaseLimiter, Lease

logger = logging.getLogger("nanobanana_async")

Owner = Literal["submit", "attempt", "task", "hold", "released"]
#: Runs limiter bookkeeping that needs I/O where the client's closing waits for it.
SettleFn = Callable[..., None]
#: Runs background work the client's closing cancels; False if closing has begun.
SpawnFn = Callable[..., bool]

#: Typical longest run (about the p95) of a generation, in seconds, by model and size (API.md).
_LONGEST: dict[str, float] = {"nano-banana-fast": 10.0, "nano-banana": 20.0}
_LONGEST_PRO: dict[str, float] = {"1K": 25.0, "2K": 50.0, "4K": 90.0}
#: For a model whose durations are not known: the longest documented typical run.
_LONGEST_UNKNOWN = 90.0
#: How often a held slot's lease is renewed (stores whose leases expire need it).
_RENEW_EVERY = 5.0


def uncertain_hold(model: str, image_size: str, *, speed: float, deadline: float | None) -> float:
    """Seconds to keep the slot of a create whose answer was lost.

    The generation may be running on the server: the slot stays taken for the model's typical
    longest duration (the task deadline when shorter), divided by the poll speed (an emulator's
    time scale), so that the key's concurrency cap holds on the server too.
    """
    if model == "nano-banana-pro":
        longest = _LONGEST_PRO.get(image_size, _LONGEST_UNKNOWN)
    else:
        longest = _LONGEST.get(model, _LONGEST_UNKNOWN)
    if deadline is not None:
        longest = min(longest, deadline)
    return longest / speed


class Claim:
    """The slot and the credit reservation of one create, held by one owner at a time."""

    __slots__ = (
        "_held_until",
        "_ledger",
        "_limiter",
        "_owner",
        "_settle_later",
        "_spawn",
        "lease",
        "reserved",
    )

    def __init__(
        self,
        *,
        reserved: int,
        ledger: CreditLedger,
        limiter: BaseLimiter,
        settle_later: SettleFn,
        spawn: SpawnFn,
    ) -> None:
        self.reserved = reserved
        self.lease: Lease | None = None
        self._ledger = ledger
        self._limiter = limiter
        self._settle_later = settle_later
        self._spawn = spawn
        self._owner: Owner = "submit"
        self._held_until = 0.0

    def __repr__(self) -> str:
        return f"Claim(owner={self._owner!r}, reserved={self.reserved}, lease={self.lease!r})"

    @property
    def owner(self) -> Owner:
        """Who holds the claim now."""
        return self._owner

    def hand_over(self, giver: Owner, taker: Owner) -> bool:
        """Pass the claim from *giver* to *taker*; False (nothing changes) if *giver* lost it."""
        if self._owner != giver:
            return False
        self._owner = taker
        return True

    def release(self, holder: Owner, *, charged: int | None) -> bool:
        """Give the slot back and settle the reservation, if *holder* holds the claim.

        *charged* None: the create never left, nothing was spent. Otherwise the create may have
        been charged that much (its answer was lost). Returns whether this call released it.
        """
        if self._owner != holder:
            return False
        self._owner = "released"
        self._settle(charged)
        self._give_back_slot()
        return True

    def hold(self, holder: Owner, *, seconds: float, charged: int) -> bool:
        """Settle an uncertain create as *charged* now, and give its slot back after *seconds*.

        The claim passes to a background hold (renewing the lease). The client's closing ends
        the hold early: the limiter then gives the slot back when the hold would have ended
        (`BaseLimiter.release_later`), or at once if it cannot. Returns whether *holder* held
        the claim.
        """
        if not self.hand_over(holder, "hold"):
            return False
        self._settle(charged)
        self._held_until = anyio.current_time() + seconds
        if self.lease is None or seconds <= 0 or not self._spawn(self._hold_slot, seconds):
            # Nothing to hold, or the client is closing: the limiter holds the slot, or it comes
            # back now.
            self._end_hold()
        return True

    def to_task(self, holder: Owner, charged: int) -> Lease:
        """Hand the claim to a created task: the reservation becomes *charged*; return the lease."""
        if not self.hand_over(holder, "task"):
            raise RuntimeError(f"a claim held by {self._owner!r} cannot pass to a task")
        lease = self.lease
        assert lease is not None, "a claim holds its lease before anything is sent"
        # The ledger already counted the charge (it learns the model's real cost there).
        self._settle_limiter(charged)
        return lease

    # --- bookkeeping ---------------------------------------------------------------------------

    def _settle(self, charged: int | None) -> None:
        if charged is None:
            self._ledger.cancel(self.reserved)
        else:
            self._ledger.uncertain(self.reserved)
        self._settle_limiter(charged or 0)

    def _settle_limiter(self, charged: int) -> None:
        if not self._limiter.settle_nowait(self.reserved, charged):
            self._settle_later(self._limiter_settle, self.reserved, charged)

    def _give_back_slot(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None and not self._limiter.release_nowait(lease):
            self._settle_later(self._limiter_release, lease)

    async def _limiter_settle(self, reserved: int, charged: int) -> None:
        try:
            await self._limiter.settle(reserved, charged)
        except Exception:
            # Never raised: the create's own outcome (a task, an uncertain create) must stand.
            logger.exception("the limiter failed to settle a create (%d credits)", charged)

    async def _limiter_release(self, lease: Lease) -> None:
        try:
            await self._limiter.release(lease)
        except Exception:
            logger.exception("the limiter failed to release a slot")

    async def _hold_slot(self, seconds: float) -> None:
        try:
            with anyio.move_on_after(seconds):
                while (lease := self.lease) is not None:
                    await anyio.sleep(min(_RENEW_EVERY, seconds))
                    await self._limiter.renew(lease)
        finally:
            # The reservation was settled when the hold began: only the slot is left.
            self._end_hold()

    def _end_hold(self) -> None:
        # Ended early (the client closes): the limiter keeps the slot for the rest of the hold.
        if not self.hand_over("hold", "released"):
            return
        left = self._held_until - anyio.current_time()
        lease = self.lease
        if lease is not None and left > 0 and self._limiter.release_later(lease, left):
            self.lease = None
            logger.info(
                "the client closes while a create whose answer was lost may still run on the "
                "server: its limiter keeps that slot %.0f s more",
                left,
            )
            return
        self._give_back_slot()
