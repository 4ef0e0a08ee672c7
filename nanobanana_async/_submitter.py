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
from typing import TypeVar

import anyio
import attrs

from ._claim import Claim
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
    SubmitHookError,
    SubmitUncertainError,
    TransportError,
)
from ._inputs import Reference
from ._lifetime import TaskHost
from ._limiter import BaseLimiter, Lease
from ._models import GenerationRequest, TaskSnapshot
from ._retry import Backoff
from ._task import Task
from ._transport import HOPELESS_ERRORS, NETWORK_ERRORS, Transport, logger
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


class NotSent:
    """An attempt whose body provably never reached the server, and that may be tried again."""

    __slots__ = ("error",)

    def __init__(self, error: TransportError | APIStatusError) -> None:
        self.error = error


#: Track a created task: (snapshot, request, lease, charged credits) -> Task.
TrackFn = Callable[[TaskSnapshot, GenerationRequest, Lease, int], Task]
#: Announce a retry: (endpoint, attempt, wait, cause, task id).
NotifyFn = Callable[[str, int, float, BaseException, "str | None"], None]
#: Seconds an uncertain create of this request keeps its slot (see `uncertain_hold`).
HoldFn = Callable[[GenerationRequest], float]


class _Abandoned(Exception):
    """The submitting coroutine left before the create's first byte: write nothing."""


class _Attempt:
    """One try of a create, run in the client's task group, and what its caller waits for."""

    __slots__ = ("abandoned", "claim", "done", "error", "orphaned", "outcome", "scope", "wake")

    def __init__(self, claim: Claim, wake: asyncio.Future[None]) -> None:
        self.claim = claim
        #: Whether the attempt has ended (its outcome or error is set).
        self.done = False
        #: What the caller awaits: resolved when the attempt ends, or when the client closes.
        self.wake = wake
        self.scope: anyio.CancelScope | None = None
        self.outcome: Task | NotSent | None = None
        self.error: BaseException | None = None
        #: The caller left before anything was written: the attempt must write nothing.
        self.abandoned = False
        #: The caller left while the create was on the wire: nobody hears of its outcome.
        self.orphaned = False

    def leave(self) -> None:
        """The caller is leaving (cancelled): stop the attempt if nothing was written yet."""
        if self.claim.owner == "submit":
            self.abandoned = True
            if self.scope is not None:
                self.scope.cancel()
        else:
            self.orphaned = True

    def on_write(self) -> None:
        """Called right before the first request byte is written: the attempt takes the claim."""
        if self.abandoned:
            raise _Abandoned
        claim = self.claim
        if not claim.hand_over("submit", "attempt") and claim.owner != "attempt":
            raise _Abandoned  # the claim was released meanwhile: nothing may leave for it

    def finish(self) -> None:
        """The attempt has ended: wake its caller."""
        self.done = True
        if not self.wake.done():
            self.wake.set_result(None)

    def result(self) -> Task | NotSent:
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


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
        host: TaskHost,
        hold: HoldFn,
    ) -> None:
        self._transport = transport
        self._limiter = limiter
        self._credits = credits
        self._retry = retry
        self._rng = rng
        self._track = track
        self._notify = notify
        self._pause = pause
        self._host = host
        self._hold = hold
        self._resend_statuses = frozenset({429, 503} if retry.resend_on_503 else {429})
        #: Waits of submits (budget, slot, backoff) that closing must wake at once.
        self._waits: set[anyio.CancelScope] = set()
        #: Attempts whose callers wait for them: closing wakes the callers at once.
        self._attempts: set[_Attempt] = set()
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
        # Each step is tried at once first: the usual create waits for nothing, and so enters
        # no cancel scope (the hot path). A step that must wait does so closable.
        if self.closed:
            raise ClientClosedError("the client is closed")
        reserved = self._credits.admit_nowait(model)
        if reserved is None:
            reserved = await self._closable(lambda: self._credits.admit(model))
        try:
            if not self._limiter.reserve_nowait(reserved):
                await self._closable(lambda: self._limiter.reserve(reserved))
        except BaseException:
            self._credits.cancel(reserved)
            raise
        claim = Claim(
            reserved=reserved,
            ledger=self._credits,
            limiter=self._limiter,
            settle_later=self._host.start_settle,
            spawn=self._host.start_soon,
        )
        try:
            # Assigned in the step acquire() returns in: no cancellation can fall in between.
            lease = self._limiter.acquire_nowait()
            if lease is None:
                lease = await self._closable(self._limiter.acquire)
            claim.lease = lease
        except BaseException:
            claim.release("submit", charged=None)
            raise
        return claim

    # --- submitting -----------------------------------------------------------------------------

    async def submit(self, request: GenerationRequest, hooks: SubmitHooks | None) -> Task:
        """Create a task for *request*; see `Client.submit` for what is raised."""
        references = request.wire_references()
        claim = await self._claim(request.model)
        try:
            backoff: Backoff | None = None
            while True:
                outcome = await self._try(request, references, claim, hooks)
                if isinstance(outcome, Task):
                    return outcome
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
            # A no-op unless the claim is still ours (nothing was written, or it came back).
            claim.release("submit", charged=None)

    async def _try(
        self,
        request: GenerationRequest,
        references: list[Reference],
        claim: Claim,
        hooks: SubmitHooks | None,
    ) -> Task | NotSent:
        """Run one attempt in the client's task group and wait for it.

        The attempt runs apart from the caller so that cancelling the caller cannot cut a create
        that is on the wire (its task would be paid for and lost): a caller that leaves before the
        first byte stops the attempt; one that leaves later lets it finish, and the created task
        stays tracked (its id is logged, and the `on_created` hook still runs).
        """
        # One loop trip first: a cancellation of the caller already under way (a cancelled
        # scope, a timeout at 0, a pending Task.cancel()) lands here, before an attempt exists.
        # The claim path takes no other trip, and on a kept-alive connection neither does the
        # attempt before its first byte.
        await asyncio.sleep(0)
        if self.closed:
            raise ClientClosedError("the client closed before the create was sent")
        attempt = _Attempt(claim, asyncio.get_running_loop().create_future())
        if not self._host.start_soon(
            self._run_attempt, request, references, hooks, attempt, name="nanobanana-create"
        ):
            raise ClientClosedError("the client closed before the create was sent")
        self._attempts.add(attempt)
        try:
            # A plain future, not a cancel scope: this wait is on every create's path. Closing
            # resolves it early (see `close`).
            await attempt.wake
        except BaseException as exc:
            attempt.leave()
            if isinstance(attempt.outcome, Task):
                # Created, and the answer was already here: say which task the caller leaves.
                note_abandoned(exc, attempt.outcome.id, "submit()")
            raise
        finally:
            self._attempts.discard(attempt)
        if not attempt.done:
            # Closing woke us; it cancels the attempt with the task group: what it did decides.
            if claim.owner == "submit":
                raise ClientClosedError("the client closed before the create was sent")
            raise SubmitUncertainError(
                request, ClientClosedError("the client closed during the create")
            )
        return attempt.result()

    async def _run_attempt(
        self,
        request: GenerationRequest,
        references: list[Reference],
        hooks: SubmitHooks | None,
        attempt: _Attempt,
    ) -> None:
        claim = attempt.claim
        try:
            with anyio.CancelScope() as scope:
                attempt.scope = scope
                if attempt.abandoned:
                    return
                attempt.outcome = await self._send(request, references, claim, hooks, attempt)
        except BaseException as exc:
            error = exc
            if claim.owner == "attempt":
                # Bytes may have left and the answer is lost: maybe charged, maybe running.
                claim.hold("attempt", seconds=self._hold(request), charged=claim.reserved)
                if not isinstance(exc, SubmitUncertainError):
                    error = SubmitUncertainError(request, exc)
                logger.warning("%s", error)
            attempt.error = error
            if not isinstance(exc, Exception):
                raise  # a cancellation (the client is closing) goes on up
        finally:
            if attempt.orphaned:
                # The caller left while the create was on the wire; if the claim came back to
                # it (a refusal, a 429), nobody is there to release it but us.
                claim.release("submit", charged=None)
            attempt.finish()

    async def _send(
        self,
        request: GenerationRequest,
        references: list[Reference],
        claim: Claim,
        hooks: SubmitHooks | None,
        attempt: _Attempt,
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

        transport = self._transport
        try:
            try:
                status, body, retry_after = await transport.post(
                    CREATE_PATH,
                    data=form,
                    task_id=None,
                    kind="create",
                    before_send=before_send,
                    on_write=attempt.on_write,
                )
            except HOPELESS_ERRORS as exc:
                raise transport.network_error(exc, "create") from exc
            except NETWORK_ERRORS as exc:
                if claim.owner != "attempt":
                    # Nothing was written: the connection failed to open (or to take the request).
                    return NotSent(transport.network_error(exc, "create"))
                raise SubmitUncertainError(request, transport.network_error(exc, "create")) from exc
        finally:
            for stream in opened:
                stream.close()
        try:
            data = decode_answer(status, body, retry_after)
            snapshot = structure_snapshot(data, body=body)
        except APIStatusError as exc:
            if status in self._resend_statuses and isinstance(exc, (RateLimitError, ServerError)):
                claim.hand_over("attempt", "submit")  # refused before any processing
                return NotSent(exc)
            if isinstance(exc, ServerError):
                # A 5xx may come from behind the point where the service charges.
                raise SubmitUncertainError(request, exc) from exc
            claim.hand_over("attempt", "submit")  # refused: nothing was charged
            raise
        except ProtocolError as exc:
            if 200 <= status < 300:
                raise SubmitUncertainError(request, exc) from exc
            claim.hand_over("attempt", "submit")
            raise
        cost = self._credits.charge(claim.reserved, request.model, snapshot.credits_cost)
        lease = claim.to_task("attempt", cost)
        task = self._track(snapshot, request, lease, cost)
        if attempt.orphaned:
            logger.warning(
                "task %s was created after its submit was cancelled; it is tracked: "
                "attach with client.task(%r) or `nanobanana wait %s`",
                task.id,
                task.id,
                task.id,
            )
        if hooks is not None and hooks.on_created is not None:
            try:
                await hooks.on_created(task)
            except Exception as exc:
                raise SubmitHookError(task, exc) from exc
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("created task %s (%s, %d credits)", task.id, request.model, cost)
        return task

    # --- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse new creates and wake every waiting submit (their attempts end with the group)."""
        self.closed = True
        for scope in list(self._waits):
            scope.cancel()
        for attempt in list(self._attempts):
            if not attempt.wake.done():
                attempt.wake.set_result(None)


def note_abandoned(exc: BaseException, task_id: str, what: str) -> None:
    """Log at WARNING, and add to *exc*'s message, the id of a paid task its caller left."""
    note = (
        f"{what} was cancelled after task {task_id} was created; it is paid for and still "
        f"tracked: client.task({task_id!r}) or `nanobanana wait {task_id}` recovers it"
    )
    logger.warning("%s", note)
    exc.args = (*exc.args, note)
