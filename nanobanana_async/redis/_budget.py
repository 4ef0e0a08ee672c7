"""The shared credit budget of a `RedisLimiter`: reservations, settles, refunds, give-backs.

A reservation belongs to the process that made it and lapses with its heartbeat, so the unsent
creates of a killed process come back to the budget. Every change is recorded under an op id:
a script run again after a lost reply changes the credits once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from .._credits import TOLD_WAIT
from .._errors import BudgetExceededError, ClientClosedError, LimiterUnavailableError
from ._keeper import Keeper

logger = logging.getLogger("nanobanana_async.redis")


class Budget:
    """The credits of one process in the shared budget of one name.

    Args:
        keeper: What this process holds, and the epoch.
        max_credits: The budget shared by every process.
        spawn: Runs a job in the background, in the limiter's task group.
    """

    def __init__(
        self,
        keeper: Keeper,
        max_credits: int,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._keeper = keeper
        self._store = keeper.store
        self.max_credits = max_credits
        self._spawn = spawn

    async def _credits(
        self, op: str, kind: str, credits: int, budget: str = "", reserved: int = 0
    ) -> tuple[str, list[Any]]:
        return await self._keeper.call(
            "credits",
            [kind, credits, budget, reserved, self._keeper.op_ttl],
            self._store.op_keys(op),
        )

    async def reserve(self, credits: int) -> None:
        """Reserve *credits*, waiting out a grace; see `RedisLimiter.reserve`."""
        op = os.urandom(8).hex()
        started = time.monotonic()
        told = False
        try:
            while True:
                epoch, answer = await self._credits(op, "reserve", credits, str(self.max_credits))
                if answer[0] != "wait":
                    break
                wait = max(int(answer[1]), 1) / 1000
                if not told and time.monotonic() - started + wait > TOLD_WAIT:
                    told = True
                    logger.info(
                        "a reservation of %d credit(s) waits %.1f s: grace of the Redis store at "
                        "%s, while the processes holding credits re-assert them",
                        credits,
                        wait,
                        self._store.shown,
                    )
                await anyio.sleep(wait)
            if answer[0] == "ok":
                await self._keeper.wait_adopted()
        except BaseException as exc:
            self.give_back(op, credits)
            if isinstance(exc, Exception) and not isinstance(
                exc, (LimiterUnavailableError, ClientClosedError)
            ):
                raise self._store.unavailable(exc) from exc
            raise
        if answer[0] == "over":
            raise BudgetExceededError(credits, int(answer[1]), self.max_credits)
        if answer[0] != "ok":
            self.give_back(op, credits)
            raise LimiterUnavailableError(
                f"Redis at {self._store.shown} answered {answer[0]!r} to a reservation; "
                "nothing was sent"
            )
        self._keeper.reserved += credits
        self._carry(epoch, "reserve", credits, 0)

    async def change(self, kind: str, credits: int, reserved: int = 0) -> None:
        """Settle (*credits* charged of *reserved*) or adjust the charged credits; never raises."""
        op = os.urandom(8).hex()
        try:
            epoch, _ = await self._credits(op, kind, credits, "", reserved)
            await self._keeper.wait_adopted()
        except BaseException as exc:
            # Not known to have reached Redis (failed, or cancelled): count it as ours all the
            # same (re-asserted after a loss): the budget errs on the side of spending less.
            self._keeper.reserved -= reserved
            self._keeper.charged += credits
            if not isinstance(exc, Exception):
                raise
            logger.warning(
                "could not update the shared budget in Redis at %s by %+d (%s)",
                self._store.shown,
                credits - reserved,
                type(exc).__name__,
            )
            return
        self._keeper.reserved -= reserved
        self._keeper.charged += credits
        self._carry(epoch, kind, credits, reserved)

    def _carry(self, epoch: str, kind: str, credits: int, reserved: int) -> None:
        """Count a change, made in the store of *epoch*, in the current store too if it changed
        meanwhile (this process then re-asserted its credits there without it)."""
        if epoch != self._keeper.epoch and not self._store.closed:
            self._spawn(self._run_carry(kind, credits, reserved))

    async def _run_carry(self, kind: str, credits: int, reserved: int) -> None:
        try:
            # An answer {"epoch", ...}: the re-assertion it causes counts the change already.
            epoch = self._keeper.epoch
            args: list[str | int] = [
                epoch,
                os.urandom(8).hex(),
                self._keeper.lease_ms,
                self._keeper.process,
                "",
            ]
            extra: list[str | int] = [kind, credits, "", reserved, self._keeper.op_ttl]
            await self._store.run(
                "credits", [*args, *extra], self._store.op_keys(os.urandom(8).hex())
            )
        except Exception as exc:
            logger.warning(
                "could not carry %+d credit(s) over to the new store at %s (%s)",
                credits - reserved,
                self._store.shown,
                type(exc).__name__,
            )

    def give_back(self, op: str, credits: int) -> None:
        """Take back, in the background, a reservation whose caller gave up on it."""
        if not self._store.closed:
            self._spawn(self._run_give_back(op, credits))

    async def _run_give_back(self, op: str, credits: int) -> None:
        try:
            await self._store.run(
                "give_back",
                [credits, self._keeper.op_ttl, self._keeper.process],
                self._store.op_keys(op),
            )
        except Exception as exc:
            logger.warning(
                "could not give back an abandoned reservation of %d credit(s) to Redis at %s "
                "(%s); it lapses with this process",
                credits,
                self._store.shown,
                type(exc).__name__,
            )
