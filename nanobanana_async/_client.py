"""`Client`: the session that submits generations, tracks them, and fans out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import aiohttp
import anyio
import attrs

from ._config import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_REPLY_BYTES,
    PollPolicy,
    RetryEvent,
    RetryPolicy,
    Timeouts,
)
from ._credits import CreditLedger, CreditUsage
from ._download import Downloader
from ._errors import (
    APIStatusError,
    ClientClosedError,
    ClientStateError,
    InvalidRequestError,
    NanoBananaError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SubmitUncertainError,
    TaskTimeoutError,
)
from ._fanout import Requests, fan_out
from ._inputs import request_references
from ._limiter import BaseLimiter, Lease, Limiter
from ._models import (
    DEFAULT_ASPECT_RATIO,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    GeneratedImage,
    GenerationRequest,
    ImageInput,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
)
from ._poller import DurationStats, PollScheduler, PollTimer
from ._task import Task, _TaskState
from ._transport import (
    HOPELESS_ERRORS,
    NETWORK_ERRORS,
    NOT_SENT_ERRORS,
    RequestKind,
    Transport,
    logger,
)
from ._wire import CREATE_PATH, RESULT_PATH, create_form, decode_answer, result_body
from ._wire import structure_snapshot as _structure

DEFAULT_BASE_URL = "https://nanobananapro.cloud"
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_MAX_CONNECTIONS = 64
#: Requests held at once by fan-out when the limiter has no concurrency limit.
DEFAULT_FANOUT_WINDOW = 128
API_KEY_ENV = "NANOBANANA_API_KEY"
BASE_URL_ENV = "NANOBANANA_BASE_URL"

#: Statuses below 500 that a poll may simply repeat (every 5xx may be repeated too).
_RETRY_POLL_STATUSES = frozenset({408, 425, 429})
#: Statuses of a create answered before any processing: re-sending cannot charge twice.
_RETRY_CREATE_STATUSES = frozenset({429, 503})


class _Retry(Exception):
    """A failure worth another try; carries the error to raise if tries run out."""

    def __init__(self, error: NanoBananaError, pause: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.pause = pause


@attrs.frozen
class _Claim:
    """What a create holds before it is sent: a limiter slot and a credit reservation."""

    lease: Lease
    reserved: int


class Client:
    """An asyncio session with the Nano Banana API.

    Args:
        api_key: The key; defaults to `$NANOBANANA_API_KEY`.
        base_url: Defaults to `$NANOBANANA_BASE_URL`, then `https://nanobananapro.cloud`.
        max_concurrency: Generations in flight at once (ignored when `limiter` is given).
        poll: Bounds of the adaptive poll timing.
        retry: Retries of safe requests.
        timeouts: Network timeouts and the per-task deadline.
        limiter: A `Limiter` shared with other clients of the same key.
        session: An aiohttp session to use (left open on close); by default the client makes one.
        proxy: An HTTP proxy URL (proxy environment variables are honoured anyway).
        ssl: An `ssl.SSLContext`, or False to skip verification; default: system CAs.
        max_connections: Size of the HTTP connection pool.
        max_download_bytes: Largest image a download accepts.
        max_reply_bytes: Largest API answer read; a larger one is a `ProtocolError`.
        max_credits: A budget: a submit that could pass it raises `BudgetExceededError` unsent.
        seed: Seeds the jitter of polls and retries (for reproducible tests).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_concurrency: int | None = DEFAULT_MAX_CONCURRENCY,
        poll: PollPolicy = PollPolicy(),  # noqa: B008 - frozen value
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen value
        timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen value
        limiter: BaseLimiter | None = None,
        session: aiohttp.ClientSession | None = None,
        proxy: str | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_credits: int | None = None,
        seed: int | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key or not key.strip():
            raise InvalidRequestError(
                "api_key",
                f"no API key: pass api_key= or set the {API_KEY_ENV} environment variable",
            )
        url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if not url.startswith(("http://", "https://")):
            raise InvalidRequestError("base_url", f"must be an http(s) URL; got {url!r}")
        if max_connections < 1:
            raise InvalidRequestError("max_connections", "must be at least 1")
        self._transport = Transport(
            api_key=key.strip(),
            base_url=url,
            timeouts=timeouts,
            max_connections=max_connections,
            session=session,
            proxy=proxy,
            ssl=ssl,
            gate=self._gate,
            max_reply_bytes=max_reply_bytes,
        )
        self._limiter = limiter if limiter is not None else Limiter(max_concurrency=max_concurrency)
        self._poll_policy = poll
        self._retry = retry
        self._timeouts = timeouts
        self._rng = random.Random(seed)
        self._credits = CreditLedger(max_credits)
        self._stats = DurationStats()
        self._timer = PollTimer(poll, self._stats, self._rng)
        self._scheduler = PollScheduler(
            self._poll, concurrency=max_connections, on_crash=self._poll_crashed
        )
        self._tasks: dict[str, _TaskState] = {}
        # Create attempts in flight (cancelled by aclose) and limiter releases (awaited by it).
        self._attempts: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._retry_listeners: list[Callable[[RetryEvent], None]] = []
        self._downloader = Downloader(
            lambda: self._transport.session,
            self._transport.download_slots,
            timeout=timeouts.download,
            max_bytes=max_download_bytes,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.Client(base_url={str(self._transport.base_url)!r}, "
            f"in_flight={len(self._tasks)}, closed={self._closed})"
        )

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        self._check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop polling, wake every waiter with `ClientClosedError`, free every slot and socket."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._scheduler.aclose()
            background = list(self._attempts)
            for job in background:
                job.cancel()
            if background:
                await asyncio.gather(*background, return_exceptions=True)
            tasks, self._tasks = self._tasks, {}
            for state in tasks.values():
                self._end(
                    state, ClientClosedError(f"the client closed before task {state.id} ended")
                )
            # Releases of a shared limiter started just now: let them finish.
            while self._background:
                await asyncio.gather(*list(self._background), return_exceptions=True)
            await self._transport.aclose()

    @property
    def closed(self) -> bool:
        """Whether `aclose()` was called."""
        return self._closed

    @property
    def credits(self) -> CreditUsage:
        """Credits this client charged, saw refunded and holds reserved, and its budget."""
        return self._credits.usage()

    @property
    def limiter(self) -> BaseLimiter:
        """The limiter that counts this client's generations in flight."""
        return self._limiter

    @property
    def in_flight(self) -> int:
        """How many tasks this client is tracking now."""
        return len(self._tasks)

    def add_retry_listener(self, listener: Callable[[RetryEvent], None]) -> Callable[[], None]:
        """Call *listener* before every retry (besides `RetryPolicy.on_retry`).

        Returns a function that removes the listener again.
        """
        self._retry_listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._retry_listeners.remove(listener)

        return remove

    async def _gate(self, kind: RequestKind) -> None:
        # Awaited by the transport with a connection slot held, right before a request leaves.
        if self._closed:
            # aclose() frees slots as it stops polls: nothing queued may leave through them.
            raise ClientClosedError("the client is closed")
        await self._limiter.ready()

    def _check(self) -> None:
        if self._closed:
            raise ClientClosedError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise ClientStateError(
                "this client belongs to another event loop; make one client per event loop"
            )

    # --- submitting ------------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str | GenerationRequest,
        *,
        model: str = DEFAULT_MODEL,
        aspect_ratio: str = DEFAULT_ASPECT_RATIO,
        image_size: str = DEFAULT_IMAGE_SIZE,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...] | None = None,
    ) -> Task:
        """Create a generation task and return it as soon as the API answers.

        Waits for a slot of the limiter first (not charged to any timeout). The create is re-sent
        only when it provably never reached the server.

        Raises:
            InvalidRequestError: the input breaks a rule of the API; nothing was sent.
            SubmitUncertainError: the create may have been charged but its answer was lost.
            APIStatusError: the API refused the create (400, 401, 402, ...).
        """
        request = (
            prompt
            if isinstance(prompt, GenerationRequest)
            else GenerationRequest(
                prompt=prompt,
                model=model,
                aspect_ratio=aspect_ratio,
                image_size=image_size,
                images=images,
            )
        )
        self._check()
        return Task(await self._submit(request))

    async def generate(
        self,
        prompt: str | GenerationRequest,
        *,
        model: str = DEFAULT_MODEL,
        aspect_ratio: str = DEFAULT_ASPECT_RATIO,
        image_size: str = DEFAULT_IMAGE_SIZE,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...] | None = None,
        timeout: float | None = None,
    ) -> TaskResult:
        """Submit a generation and wait for its result (`submit` then `Task.wait`)."""
        task = await self.submit(
            prompt, model=model, aspect_ratio=aspect_ratio, image_size=image_size, images=images
        )
        return await task.wait(timeout)

    async def _submit(
        self,
        request: GenerationRequest,
        before_send: Callable[[], Awaitable[None]] | None = None,
        on_created: Callable[[_TaskState], Awaitable[None]] | None = None,
    ) -> _TaskState:
        """Submit *request*; await *before_send* once, right before the first attempt leaves.

        The batch journal writes its intent there: after the limiter's wait, so that a crash while
        queued is not mistaken for a create that may have been charged. *on_created* is awaited
        with the new task inside the attempt, which the caller's cancellation does not reach.
        """
        references = request_references(request)
        reserved = self._credits.reserve(request.model)
        try:
            lease = await self._limiter.acquire()
        except BaseException:
            self._credits.cancel(reserved)
            raise
        claim = _Claim(lease, reserved)
        # Until a create attempt takes the claim over, this coroutine owns it.
        owned = True
        try:
            started = time.monotonic()
            attempt = 0
            while True:
                attempt += 1
                await self._limiter.ready()
                self._check()
                if before_send is not None and attempt == 1:
                    await before_send()
                    self._check()
                # The attempt runs as its own task: once bytes may be on the wire, cancelling the
                # caller must not cut it off, or a charged task could go untracked.
                job = asyncio.get_running_loop().create_task(
                    self._create_attempt(request, references, claim, on_created)
                )
                self._attempts.add(job)
                job.add_done_callback(self._attempts.discard)
                owned = False
                try:
                    outcome = await asyncio.shield(job)
                except asyncio.CancelledError:
                    if job.cancelled() and self._closed:
                        # Not our caller's cancellation: aclose() stopped the attempt mid-flight.
                        raise SubmitUncertainError(
                            request, ClientClosedError("the client closed during the create")
                        ) from None
                    job.add_done_callback(self._reclaim_after_abandon(claim))
                    raise
                if isinstance(outcome, _TaskState):
                    return outcome
                owned = True
                error = outcome.error
                wait = await self._retry_wait(attempt, outcome)
                if self._out_of_tries(attempt, started, wait):
                    raise error
                self._notify_retry("create", attempt, wait, error, None)
                if wait > 0:
                    await anyio.sleep(wait)
        finally:
            if owned:
                self._drop_claim(claim)

    def _drop_claim(self, claim: _Claim) -> None:
        """Give back a claim whose create definitely did not happen."""
        self._credits.cancel(claim.reserved)
        self._release_soon(claim.lease)

    def _reclaim_after_abandon(self, claim: _Claim) -> Callable[[asyncio.Task[Any]], None]:
        def reclaim(job: asyncio.Task[Any]) -> None:
            # The caller was cancelled mid-attempt. If the attempt ended in "retry", nobody owns
            # the claim any more; a created task owns it, and a raising attempt settled it.
            if not job.cancelled() and isinstance(job.exception() or job.result(), _Retry):
                self._drop_claim(claim)

        return reclaim

    def _release_soon(self, lease: Lease) -> None:
        if isinstance(self._limiter, Limiter):
            self._limiter.release_nowait(lease)
            return
        job = asyncio.get_running_loop().create_task(self._limiter.release(lease))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _create_attempt(
        self,
        request: GenerationRequest,
        references: list[Any],
        claim: _Claim,
        on_created: Callable[[_TaskState], Awaitable[None]] | None,
    ) -> _TaskState | _Retry:
        """Send one create; from here the attempt owns the claim (slot and credit reservation).

        A created task takes the claim over; a failure settles it. Returns `_Retry` (the caller
        takes the claim back) when the create provably never arrived.
        """
        try:
            form, opened = create_form(request, references)
        except OSError as exc:
            self._drop_claim(claim)
            raise InvalidRequestError("images", f"cannot open a reference: {exc}") from exc
        sent = False

        def mark_sent() -> None:
            nonlocal sent
            sent = True

        try:
            try:
                status, body, retry_after = await self._transport.post(
                    CREATE_PATH, data=form, task_id=None, kind="create", on_send=mark_sent
                )
            except HOPELESS_ERRORS as exc:
                raise self._transport.network_error(exc, "create") from exc
            except NOT_SENT_ERRORS as exc:
                return _Retry(self._transport.network_error(exc, "create"))
            except NETWORK_ERRORS as exc:
                raise SubmitUncertainError(
                    request, self._transport.network_error(exc, "create")
                ) from exc
            finally:
                for stream in opened:
                    stream.close()
            if status in _RETRY_CREATE_STATUSES:
                try:
                    decode_answer(status, body, retry_after)
                except APIStatusError as exc:
                    return _Retry(exc, getattr(exc, "retry_after", None) if status == 429 else None)
            try:
                data = decode_answer(status, body, retry_after)
                snapshot = _structure(data, body=body)
            except ServerError as exc:
                raise SubmitUncertainError(request, exc) from exc
            except ProtocolError as exc:
                if 200 <= status < 300:
                    raise SubmitUncertainError(request, exc) from exc
                raise
        except (SubmitUncertainError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not sent:
                # aclose() stopped the attempt while it still queued for a connection.
                self._drop_claim(claim)
                raise
            # It may have been charged (a cancel here comes from aclose() with the create in
            # flight): count it so, and never let a budget forget it.
            self._credits.uncertain(claim.reserved)
            self._release_soon(claim.lease)
            raise
        except BaseException:
            self._drop_claim(claim)
            raise
        cost = self._credits.charge(claim.reserved, request.model, snapshot.credits_cost)
        state = self._track(snapshot, request=request, lease=claim.lease)
        state.cost = state.charged = cost
        if on_created is not None:
            await on_created(state)
        return state

    def _track(
        self, snapshot: TaskSnapshot, *, request: GenerationRequest | None, lease: Lease | None
    ) -> _TaskState:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = self._timeouts.task
        state = _TaskState(
            self._bind(snapshot),
            model=request.model if request is not None else None,
            image_size=request.image_size if request is not None else None,
            submitted_at=now,
            deadline=None if deadline is None else now + deadline,
            lease=lease,
        )
        if snapshot.is_terminal:
            self._end(state)
            return state
        self._tasks[state.id] = state
        self._schedule(state, now + self._timer.first_delay(state))
        return state

    def _schedule(self, state: _TaskState, due: float) -> None:
        if state.deadline is not None and due > state.deadline:
            due = state.deadline
        self._scheduler.schedule(state, due)

    # --- polling ---------------------------------------------------------------------------------

    async def _poll(self, state: _TaskState) -> None:
        """Poll one tracked task once (called by the scheduler) and plan what comes next."""
        if state.done:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        try:
            snapshot = await self._poll_once(state.id)
        except _Retry as retry:
            if state.failures == 0:
                state.first_failure_at = now
            state.failures += 1
            wait = await self._retry_wait(state.failures, retry)
            # A run of failed polls is bounded by the retry policy, and by the task's deadline.
            given_up = self._out_of_tries(
                state.failures, state.first_failure_at, wait, clock=loop.time
            ) or (state.deadline is not None and loop.time() + wait > state.deadline)
            if given_up:
                self._end(state, retry.error)
                return
            self._notify_retry("result", state.failures, wait, retry.error, state.id)
            self._schedule(state, loop.time() + wait)
            return
        except NanoBananaError as exc:
            self._end(state, exc)
            return
        state.failures = 0
        lease = state.lease
        if (
            lease is not None
            and not snapshot.is_terminal
            and not isinstance(self._limiter, Limiter)
        ):
            # A shared store's leases expire (so a crashed worker frees its slots): each poll of a
            # live task keeps its lease alive. The in-process limiter has nothing to renew.
            await self._limiter.renew(lease)
        self._update(state, snapshot, loop.time())

    async def _poll_once(self, task_id: str) -> TaskSnapshot:
        """One result request. Raises `_Retry` for what may be repeated, typed errors otherwise."""
        try:
            status, body, retry_after = await self._transport.post(
                RESULT_PATH, json_body=result_body(task_id), task_id=task_id, kind="poll"
            )
        except HOPELESS_ERRORS as exc:
            raise self._transport.network_error(exc, "poll") from exc
        except NETWORK_ERRORS as exc:
            raise _Retry(self._transport.network_error(exc, "poll")) from exc
        try:
            data = decode_answer(status, body, retry_after)
            return self._bind(_structure(data, task_id=task_id, body=body))
        except RateLimitError as exc:
            raise _Retry(exc, exc.retry_after if exc.retry_after is not None else None) from exc
        except APIStatusError as exc:
            if exc.status >= 500 or exc.status in _RETRY_POLL_STATUSES:
                raise _Retry(exc) from exc
            raise
        except ProtocolError as exc:
            raise _Retry(exc) from exc

    def _bind(self, snapshot: TaskSnapshot) -> TaskSnapshot:
        if not snapshot.results:
            return snapshot
        bound = tuple(attrs.evolve(image, fetcher=self._downloader) for image in snapshot.results)
        return attrs.evolve(snapshot, results=bound)

    def _update(self, state: _TaskState, snapshot: TaskSnapshot, now: float) -> None:
        old = state.snapshot
        if snapshot.credits_cost is not None and state.cost is None:
            state.cost = snapshot.credits_cost
        moved = snapshot.progress != old.progress
        if moved or snapshot.status is not old.status or snapshot.results != old.results:
            if old.progress == 0 and snapshot.progress > 0:
                state.first_progress = (now, snapshot.progress)
            state.publish(snapshot)
        if snapshot.is_terminal:
            if snapshot.status is TaskStatus.FAILED and state.charged:
                # The service refunds failed tasks (only what this client paid counts here).
                self._credits.refund(state.charged)
            if snapshot.status is TaskStatus.SUCCEEDED and state.model is not None:
                self._stats.add(state.model, state.image_size, now - state.submitted_at)
            self._end(state)
            return
        if state.deadline is not None and now >= state.deadline:
            self._end(
                state,
                TaskTimeoutError(
                    f"task {state.id} passed the client's task deadline of "
                    f"{self._timeouts.task} s (last progress {snapshot.progress}%)",
                    task_id=state.id,
                ),
            )
            return
        self._schedule(state, now + self._timer.next_delay(state, now, moved))

    def _poll_crashed(self, state: _TaskState, exc: BaseException) -> None:
        # A bug (ours, a hook's or a limiter's) must not leave a task unpolled holding its slot.
        logger.error("polling task %s failed unexpectedly", state.id, exc_info=exc)
        self._end(state, exc)

    def _end(self, state: _TaskState, error: BaseException | None = None) -> None:
        self._tasks.pop(state.id, None)
        state.finish(error)
        lease, state.lease = state.lease, None
        if lease is not None:
            self._release_soon(lease)

    async def _retry_wait(self, attempt: int, retry: _Retry) -> float:
        """Return the wait before the next try; after a 429 the whole key waits at least that."""
        wait = self._retry.backoff(attempt, self._rng.random())
        if isinstance(retry.error, RateLimitError):
            # Retry-After is law for every request of the key, not only this one.
            hinted = retry.pause
            if hinted is None:
                # No hint: the key waits out this attempt's backoff cap (no wait without sleeping).
                hinted = (
                    min(self._retry.max_backoff, self._retry.initial_backoff * 2.0 ** (attempt - 1))
                    if self._retry.sleep
                    else 0.0
                )
            await self._limiter.pause(hinted)
            if self._retry.sleep:
                wait = max(wait, hinted)
        return wait

    def _out_of_tries(
        self,
        attempt: int,
        started: float,
        wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> bool:
        if attempt >= self._retry.attempts:
            return True
        deadline = self._retry.deadline
        return deadline is not None and clock() + wait - started > deadline

    def _notify_retry(
        self, endpoint: str, attempt: int, wait: float, cause: BaseException, task_id: str | None
    ) -> None:
        logger.debug(
            "retrying %s (attempt %d, task %s) in %.2f s after %s",
            endpoint,
            attempt,
            task_id,
            wait,
            cause,
        )
        hooks = self._retry_listeners
        if self._retry.on_retry is None and not hooks:
            return
        event = RetryEvent(
            endpoint=endpoint, attempt=attempt, wait=wait, cause=cause, task_id=task_id
        )
        for hook in (self._retry.on_retry, *hooks):
            if hook is None:
                continue
            try:
                hook(event)
            except Exception:
                logger.exception("a retry hook raised; ignored")

    # --- fan-out ---------------------------------------------------------------------------------

    def _window(self) -> int:
        limit = self._limiter.max_concurrency if isinstance(self._limiter, Limiter) else None
        # Twice the slots: the next submits already wait for a slot when one frees.
        return 2 * (limit if limit is not None else DEFAULT_FANOUT_WINDOW // 2)

    @overload
    def as_completed(
        self, requests: Requests, *, return_exceptions: Literal[False] = False
    ) -> AsyncIterator[Task]: ...

    @overload
    def as_completed(
        self, requests: Requests, *, return_exceptions: Literal[True]
    ) -> AsyncIterator[Task | NanoBananaError]: ...

    async def as_completed(
        self, requests: Requests, *, return_exceptions: bool = False
    ) -> AsyncIterator[Task | NanoBananaError]:
        """Submit every request (lazily, O(max_concurrency) at a time); yield tasks as they end.

        Failed tasks are yielded too (`await task` raises). A submit error is raised at once
        (the tasks in flight stay tracked), or yielded when *return_exceptions* is true.
        """
        self._check()
        outcomes = fan_out(
            self.submit, requests, window=self._window(), return_exceptions=return_exceptions
        )
        # Closed at once on any exit, so that nothing more is submitted after an error.
        async with contextlib.aclosing(outcomes):
            async for _, outcome in outcomes:
                yield outcome

    @overload
    async def map(
        self, requests: Requests, *, return_exceptions: Literal[False] = False
    ) -> list[TaskResult]: ...

    @overload
    async def map(
        self, requests: Requests, *, return_exceptions: Literal[True]
    ) -> list[TaskResult | NanoBananaError]: ...

    async def map(
        self, requests: Requests, *, return_exceptions: bool = False
    ) -> list[TaskResult] | list[TaskResult | NanoBananaError]:
        """Run every request and return the results in input order.

        The first error (a submit error or a failed task) is raised, unless *return_exceptions*
        is true: then each failed request's place holds its error.
        """
        self._check()
        results: dict[int, TaskResult | NanoBananaError] = {}
        outcomes = fan_out(
            self.submit, requests, window=self._window(), return_exceptions=return_exceptions
        )
        async with contextlib.aclosing(outcomes):
            async for index, outcome in outcomes:
                if isinstance(outcome, Task):
                    try:
                        results[index] = outcome._outcome()
                    except NanoBananaError as exc:
                        if not return_exceptions:
                            raise
                        results[index] = exc
                else:
                    results[index] = outcome
        return [results[i] for i in range(len(results))]

    # --- looking up ------------------------------------------------------------------------------

    def task(self, task_id: str) -> Task:
        """Return a `Task` for a task submitted elsewhere (another request, process or host).

        The client polls it until it is terminal. It holds no slot of the limiter.
        """
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequestError("task_id", "must be a non-empty string")
        self._check()
        state = self._tasks.get(task_id)
        if state is None:
            state = self._track(
                TaskSnapshot(id=task_id, status=TaskStatus.RUNNING), request=None, lease=None
            )
        return Task(state)

    async def get(self, task_id: str) -> TaskSnapshot:
        """Poll a task once (retrying safe failures) and return its snapshot; track nothing."""
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequestError("task_id", "must be a non-empty string")
        self._check()
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self._check()
            try:
                return await self._poll_once(task_id)
            except _Retry as retry:
                wait = await self._retry_wait(attempt, retry)
                if self._out_of_tries(attempt, started, wait):
                    raise retry.error from retry
                self._notify_retry("result", attempt, wait, retry.error, task_id)
                if wait > 0:
                    await anyio.sleep(wait)

    async def download(
        self, image: GeneratedImage, path: str | os.PathLike[str] | None = None
    ) -> bytes | Path:
        """Download *image*: its bytes, or the path written when *path* is given."""
        self._check()
        if path is None:
            return await self._downloader.read(image)
        return await self._downloader.save(image, path)
