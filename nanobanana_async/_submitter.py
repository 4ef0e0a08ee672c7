"""The one create path: claim, attempts, and what each failure means for the money.

Every create (`Client.submit`, fan-out, `Batch`) goes through `Submitter.submit`. It owns, in one
place: the credit reservation (the client's budget and the limiter's), the limiter slot, the
attempts, and the classification of each failure:

- *not sent*: the body never left (vetoed, closed, refused connection, a gate that failed); the
  claim is given back, nothing was charged, and the create may be tried again where that helps;
- *uncertain*: the body may have left and the answer was lost; counted as charged, never re-sent
  (`SubmitUncertainError`);
- *answered*: the API answered; a task is tracked (it takes the claim over), or the refusal is
  raised and nothing was charged. A 429 (and, by opt-in, a 503) is an answer given before any
  processing: the create is re-sent after the pause it asks for.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import attrs

from ._config import RetryPolicy
from ._credits import CreditLedger
from ._errors import (
    APIStatusError,
    ClientClosedError,
    InvalidRequestError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SubmitAbandonedError,
    SubmitUncertainError,
    TransportError,
)
from ._inputs import Reference
from ._limiter import BaseLimiter, Lease
from ._models import GenerationRequest, TaskSnapshot
from ._retry import Backoff
from ._task import Task
from ._transport import HOPELESS_ERRORS, NETWORK_ERRORS, NOT_SENT_ERRORS, Transport, logger
from ._wire import CREATE_PATH, create_form, decode_answer, structure_snapshot

T = TypeVar("T")

#: Tries of a create to a server that never answered anything yet: fail fast on a wrong URL.
UNREACHED_ATTEMPTS = 3


@attrs.frozen(kw_only=True)
class SubmitHooks:
    """Callbacks around one create, for callers that record what they send (e.g. a journal).

    Attributes:
        before_send: Awaited right before the body leaves (after the limiter's waits), at every
            attempt. Returning False vetoes the create: it is abandoned unsent
            (`SubmitAbandonedError`) and nothing is charged.
        on_created: Awaited with the new `Task` as soon as the answer is read, inside the
            attempt, which cancelling the caller does not interrupt.
    """

    before_send: Callable[[GenerationRequest], Awaitable[bool | None]] | None = None
    on_created: Callable[[Task], Awaitable[None]] | None = None


@attrs.define
class Claim:
    """What a create holds before it is answered: a slot and a reservation of its cost."""

    lease: Lease | None
    reserved: int
    settled: bool = False


class NotSent:
    """An attempt whose body provably never reached the server, and that may be tried again."""

    __slots__ = ("error",)

    def __init__(self, error: TransportError | APIStatusError) -> None:
        self.error = error


#: Track a created task: (snapshot, request, lease, charged credits) -> Task.
TrackFn = Callable[[TaskSnapshot, GenerationRequest, Lease, int], Task]
#: Announce a retry: (endpoint, attempt, wait, cause, task id).
NotifyFn = Callable[[str, int, float, BaseException, "str | None"], None]


class Submitter:
    """Sends creates for one client; see the module docstring for what it guarantees."""

    def __init__(
        self,
        *,
        transport: Transport,
        limiter: BaseLimiter,
        credits: CreditLedger,
        retry: RetryPolicy,
        rng: random.Random,
        track: TrackFn,
        notify: NotifyFn,
        pause: Callable[[float], Awaitable[None]],
    ) -> None:
        self._transport = transport
        self._limiter = limiter
        self._credits = credits
        self._retry = retry
        self._rng = rng
        self._track = track
        self._notify = notify
        self._pause = pause
        self._resend_statuses = frozenset({429, 503} if retry.resend_on_503 else {429})
        #: Waits of submits (budget, slot, backoff) that closing must wake at once.
        self._waits: set[anyio.CancelScope] = set()
        #: Create attempts running, with whether their body may have left.
        self._attempts: dict[asyncio.Task[Any], list[bool]] = {}
        #: Slot and budget give-backs started from synchronous code, awaited by `aclose`.
        self._background: set[asyncio.Task[Any]] = set()
        self.closed = False

    # --- the claim ------------------------------------------------------------------------------

    async def _closable(self, wait: Callable[[], Awaitable[T]]) -> T:
        """Await *wait()*; if the client closes meanwhile, raise `ClientClosedError` instead."""
        if self.closed:
            raise ClientClosedError("the client is closed")
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                return await wait()
            finally:
                self._waits.discard(scope)
        raise ClientClosedError("the client closed before the create was sent")

    async def _claim(self, model: str) -> Claim:
        reserved = await self._closable(lambda: self._credits.admit(model))
        claim = Claim(None, reserved)
        try:
            await self._closable(lambda: self._limiter.reserve(reserved))
        except BaseException:
            self._credits.cancel(reserved)
            raise
        try:
            claim.lease = await self._closable(self._limiter.acquire)
        except BaseException:
            await self.settle(claim, None)
            raise
        return claim

    async def settle(self, claim: Claim, charged: int | None) -> None:
        """Settle a claim no task took over: *charged* credits were spent (None: never sent).

        Runs to its end even if the caller is cancelled meanwhile, and never raises: an error of
        the limiter is logged, so that it can never replace the error that explains the create.
        """
        if claim.settled:
            return
        claim.settled = True
        if charged is None:
            self._credits.cancel(claim.reserved)
        else:
            self._credits.uncertain(claim.reserved)
        await run_to_end(self._give_back(claim, charged or 0))

    async def _give_back(self, claim: Claim, charged: int) -> None:
        try:
            await self._limiter.settle(claim.reserved, charged)
        except Exception:
            logger.exception("the limiter failed to settle a create (%d credits)", charged)
        if claim.lease is not None:
            try:
                await self._limiter.release(claim.lease)
            except Exception:
                logger.exception("the limiter failed to release a slot")

    def settle_soon(self, claim: Claim, charged: int | None) -> None:
        """`settle` from synchronous code (a done-callback); `aclose` awaits it."""
        self.spawn(self.settle(claim, charged))

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run limiter bookkeeping in the background; `aclose` waits for it."""
        job = asyncio.ensure_future(work)
        self._background.add(job)
        job.add_done_callback(self._background.discard)
        job.add_done_callback(_log_failure)

    # --- submitting -----------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest, hooks: SubmitHooks | None) -> Task:
        """Create a task for *request*; see `Client.submit` for what is raised."""
        references = request.wire_references()
        claim = await self._claim(request.model)
        owned = True  # until an attempt takes the claim over
        try:
            backoff: Backoff | None = None
            while True:
                flags = [False]  # [sent]: set the moment the body may leave
                job = asyncio.get_running_loop().create_task(
                    self._attempt(request, references, claim, hooks, flags)
                )
                self._attempts[job] = flags
                job.add_done_callback(self._attempts_done)
                owned = False
                try:
                    outcome = await asyncio.shield(job)
                except asyncio.CancelledError:
                    if job.cancelled() and self.closed:
                        # Not our caller's cancellation: aclose() stopped the attempt.
                        if flags[0]:
                            raise SubmitUncertainError(
                                request, ClientClosedError("the client closed during the create")
                            ) from None
                        raise ClientClosedError(
                            "the client closed before the create was sent"
                        ) from None
                    # A "not sent, try again" outcome is nobody's once we leave: give it back.
                    job.add_done_callback(self._reclaim_after_abandon(claim))
                    if not flags[0]:
                        # Nothing left yet: stop the attempt too (it settles the claim unsent).
                        job.cancel()
                        await run_to_end(asyncio.gather(job, return_exceptions=True))
                    raise
                if isinstance(outcome, Task):
                    return outcome
                owned = True
                if backoff is None:
                    backoff = Backoff(self._retry, self._rng)
                wait = backoff.next_wait(outcome.error)
                if (
                    not self._transport.answered
                    and isinstance(outcome.error, TransportError)
                    and backoff.attempt >= UNREACHED_ATTEMPTS
                ):
                    wait = None  # nothing ever answered: most likely a wrong URL; fail fast
                if backoff.pause:
                    await self._pause(backoff.pause)
                if wait is None:
                    raise outcome.error
                self._notify("create", backoff.attempt, wait, outcome.error, None)
                if wait > 0:
                    await self._closable(lambda: anyio.sleep(wait))  # noqa: B023 - awaited here
        finally:
            if owned:
                await self.settle(claim, None)

    async def _settle_created(self, reserved: int, cost: int, task_id: str) -> None:
        try:
            await self._limiter.settle(reserved, cost)
        except Exception:
            logger.exception("the limiter failed to settle the create of task %s", task_id)

    def _attempts_done(self, job: asyncio.Task[Any]) -> None:
        self._attempts.pop(job, None)

    def _reclaim_after_abandon(self, claim: Claim) -> Callable[[asyncio.Task[Any]], None]:
        def reclaim(job: asyncio.Task[Any]) -> None:
            # The caller left mid-attempt. A "not sent, try again" outcome is owned by nobody
            # now: give it back. A created task owns the claim; a raising attempt settled it.
            if (
                not job.cancelled()
                and job.exception() is None
                and isinstance(job.result(), NotSent)
            ):
                self.settle_soon(claim, None)

        return reclaim

    async def _attempt(
        self,
        request: GenerationRequest,
        references: list[Reference],
        claim: Claim,
        hooks: SubmitHooks | None,
        flags: list[bool],
    ) -> Task | NotSent:
        """Send one create; from here the attempt owns the claim until it returns `NotSent`."""
        try:
            return await self._send(request, references, claim, hooks, flags)
        except SubmitUncertainError:
            await self.settle(claim, claim.reserved)
            raise
        except asyncio.CancelledError:
            # aclose() (or the caller, before anything left) stopped the attempt.
            await self.settle(claim, claim.reserved if flags[0] else None)
            raise
        except BaseException:
            # Refused by the API, vetoed, closed, or a gate that failed: nothing was charged.
            await self.settle(claim, None)
            raise

    async def _send(
        self,
        request: GenerationRequest,
        references: list[Reference],
        claim: Claim,
        hooks: SubmitHooks | None,
        flags: list[bool],
    ) -> Task | NotSent:
        try:
            form, opened = create_form(request, references)
        except OSError as exc:
            raise InvalidRequestError("images", f"cannot open a reference: {exc}") from exc

        async def before_send() -> None:
            if self.closed:
                raise ClientClosedError("the client closed before the create was sent")
            hook = hooks.before_send if hooks is not None else None
            if hook is not None and await hook(request) is False:
                raise SubmitAbandonedError(request, "vetoed by the before_send hook")

        def mark_sent() -> None:
            flags[0] = True

        transport = self._transport
        try:
            try:
                status, body, retry_after = await transport.post(
                    CREATE_PATH,
                    data=form,
                    task_id=None,
                    kind="create",
                    before_send=before_send,
                    on_send=mark_sent,
                )
            except HOPELESS_ERRORS as exc:
                raise transport.network_error(exc, "create") from exc
            except NOT_SENT_ERRORS as exc:
                return NotSent(transport.network_error(exc, "create"))
            except NETWORK_ERRORS as exc:
                if not flags[0]:
                    raise  # a hook's or a gate's own error: nothing left
                raise SubmitUncertainError(request, transport.network_error(exc, "create")) from exc
        finally:
            for stream in opened:
                stream.close()
        try:
            data = decode_answer(status, body, retry_after)
            snapshot = structure_snapshot(data, body=body)
        except APIStatusError as exc:
            if status in self._resend_statuses and isinstance(exc, (RateLimitError, ServerError)):
                return NotSent(exc)
            if isinstance(exc, ServerError):
                # A 5xx may come from behind the point where the service charges.
                raise SubmitUncertainError(request, exc) from exc
            raise
        except ProtocolError as exc:
            if 200 <= status < 300:
                raise SubmitUncertainError(request, exc) from exc
            raise
        cost = self._credits.charge(claim.reserved, request.model, snapshot.credits_cost)
        claim.settled = True
        lease = claim.lease
        assert lease is not None  # a claim always holds a lease once acquired
        task = self._track(snapshot, request, lease, cost)
        # The task exists and is paid for: a limiter's bookkeeping must not lose it.
        await run_to_end(self._settle_created(claim.reserved, cost, task.id))
        if hooks is not None and hooks.on_created is not None:
            await hooks.on_created(task)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("created task %s (%s, %d credits)", task.id, request.model, cost)
        return task

    # --- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wake every waiting submit, stop every attempt, and finish limiter bookkeeping."""
        self.closed = True
        for scope in list(self._waits):
            scope.cancel()
        attempts = list(self._attempts)
        for job in attempts:
            job.cancel()
        if attempts:
            await asyncio.gather(*attempts, return_exceptions=True)
        await self.drain()

    async def drain(self) -> None:
        """Wait for background limiter bookkeeping to finish."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


async def run_to_end(work: Awaitable[T]) -> T:
    """Await *work* to its end even if the caller is cancelled meanwhile; then re-raise that.

    (An anyio shield does not stop a plain `Task.cancel()` on asyncio; this does.)
    """
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


def _log_failure(job: asyncio.Task[Any]) -> None:
    if not job.cancelled() and (exc := job.exception()) is not None:
        logger.error("a limiter call failed in the background", exc_info=exc)
