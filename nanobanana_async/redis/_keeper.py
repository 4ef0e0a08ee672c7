"""The lease keeper of a `RedisLimiter`: what this process holds, and the epoch it holds it in.

It runs every script that checks the epoch (`Keeper.call`), so that the first one to find a new
store re-asserts this process's slots and credits before anything else happens there; and its
loop, for the limiter's whole life, renews the leases and the process's heartbeat.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import anyio

from .._errors import LimiterUnavailableError
from . import _scripts
from ._store import Store

logger = logging.getLogger("nanobanana_async.redis")

#: How many keeper rounds fit in a lease: a holder notices a lost store within this fraction
#: of a lease, well inside the grace (a third of one) that its re-assertion starts.
ROUNDS_PER_LEASE = 6


class Keeper:
    """What one process holds in the store of one name, kept alive and re-asserted when lost.

    Args:
        store: The connection to use.
        lease_seconds: How long a lease outlives a holder that stopped renewing it.
        strict: Whether an empty store grants nothing for one lease time.
    """

    def __init__(self, store: Store, *, lease_seconds: float, strict: bool) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self.grace_ms = self.lease_ms // 3
        self._strict = "1" if strict else "0"
        #: This process's id in the store (owner of its reservations).
        self.process = os.urandom(8).hex()
        #: The leases held: token -> when last pushed to Redis (monotonic).
        self.held: dict[str, float] = {}
        #: Credits this process charged (less refunds) and reserved for creates not yet settled.
        self.charged = 0
        self.reserved = 0
        self.epoch = ""
        self._lock = anyio.Lock()
        # How long a store outlives the last script that touched it (seconds).
        self._key_life = lease_seconds * _scripts.KEY_LEASES
        self._contact = -float("inf")
        # How long Redis remembers the answer of a change of the credits (ms).
        self.op_ttl = max(30_000, 4 * self.lease_ms)

    def holding(self) -> bool:
        """Whether this process holds slots or credits (its keeper must renew them)."""
        return bool(self.held) or self.charged > 0 or self.reserved > 0

    async def call(
        self, script: str, extra: Sequence[str | int], keys: Sequence[str] | None = None
    ) -> tuple[str, list[Any]]:
        """Run a script that checks the epoch; return the epoch it ran in and its answer.

        When the store turns out new, first re-assert what this process holds into it.
        """
        for _ in range(3):
            epoch = self.epoch
            args: list[str | int] = [
                epoch,
                os.urandom(8).hex(),
                self.lease_ms,
                self.store_id,
                self._strict,
            ]
            answer = await self.store.run(script, [*args, *extra], keys)
            if answer[0] != "epoch":
                self._contact = time.monotonic()
                return epoch, list(answer)
            await self._adopt(str(answer[1]))
        raise LimiterUnavailableError(
            f"the Redis store at {self.store.shown} keeps changing its epoch; nothing was sent"
        )

    @property
    def store_id(self) -> str:
        """The process id the scripts see."""
        return self.process

    async def wait_adopted(self) -> None:
        """Wait until no re-assertion is under way (one may be counting our credits already)."""
        if self._lock.locked():
            async with self._lock:
                pass

    async def _adopt(self, epoch: str) -> None:
        async with self._lock:
            if self.epoch == epoch:
                return
            # Evidence of a lost store: we held something, or touched it so recently that it
            # cannot have lapsed on its own. Then the others get a short grace to re-assert.
            lost = bool(self.epoch) and (
                self.holding() or time.monotonic() - self._contact < self._key_life * 0.9
            )
            if lost and self.holding():
                logger.warning(
                    "Redis at %s lost the limiter's state (restart, flush, restore or failover): "
                    "re-asserting %d slot(s) and %d credit(s) of this process",
                    self.store.shown,
                    len(self.held),
                    self.charged + self.reserved,
                )
            if lost:
                tokens = list(self.held)
                answer = await self.store.run(
                    "reassert",
                    [
                        epoch,
                        "",
                        self.lease_ms,
                        self.process,
                        "",
                        self.grace_ms,
                        max(0, self.charged),
                        max(0, self.reserved),
                        self.op_ttl,
                        *tokens,
                    ],
                    self.store.op_keys(os.urandom(8).hex()),
                )
                if answer[0] == "epoch":
                    return  # changed again meanwhile: the caller's retry reports it
                now = time.monotonic()
                for token in self.held:
                    self.held[token] = now
                # A slot released while the re-assertion was on its way may have been put back
                # after its release reached Redis: take it out again (the grace just set keeps
                # new grants waiting meanwhile, so it is never counted against anyone).
                await self._release_again([token for token in tokens if token not in self.held])
            self.epoch = epoch

    async def _release_again(self, tokens: list[str]) -> None:
        if not tokens:
            return
        try:
            await self.store.run("release", [self.store.channel, "", *tokens])
        except Exception as exc:
            logger.debug("releasing re-asserted leases given back meanwhile failed: %r", exc)

    async def renew(self, tokens: Sequence[str]) -> None:
        """Extend the leases *tokens* that still exist (and the heartbeat); never raises."""
        if time.monotonic() < self.store.outage_until:
            return
        try:
            _, answer = await self.call("renew", tokens)
        except Exception as exc:
            logger.debug("renewing leases in Redis failed: %r", exc)
            return
        # A lease released meanwhile is gone on purpose, not lapsed.
        lost = [str(token) for token in answer[1:] if str(token) in self.held]
        if lost:
            logger.warning(
                "%d slot(s) of this process lapsed in Redis at %s (was the event loop blocked "
                "for longer than lease_seconds?); their tasks go on",
                len(lost),
                self.store.shown,
            )
        now = time.monotonic()
        for token in tokens:
            if token in self.held:
                self.held[token] = now

    async def run(self) -> None:
        """For the limiter's life: renew what this process holds, a few times per lease."""
        period = self.lease_seconds / ROUNDS_PER_LEASE
        while True:
            await anyio.sleep(period)
            if not self.holding():
                continue
            due = time.monotonic() - self.lease_seconds / 3
            # Every round makes a call: it renews the heartbeat and notices a lost store.
            await self.renew([token for token, pushed in self.held.items() if pushed <= due])
