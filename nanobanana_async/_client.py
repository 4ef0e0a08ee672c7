"""`Client`: the session that submits generations, tracks them, and fans out."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import random
import ssl as ssl_module
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, overload

import aiohttp
import anyio
import attrs

from ._claim import uncertain_hold
from ._config import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_REPLY_BYTES,
    PollPolicy,
    RequestKind,
    RetryEvent,
    RetryPolicy,
    Timeouts,
    positive_int,
)
from ._credits import CreditLedger, CreditUsage, check_prices
from ._download import Downloader
from ._errors import (
    APIStatusError,
    ClientClosedError,
    ClientStateError,
    InvalidRequestError,
    NanoBananaError,
    ProtocolError,
    TaskTimeoutError,
)
from ._fanout import Requests, fan_out
from ._lifetime import TaskHost, run_to_end
from ._limiter import BaseLimiter, Lease, Limiter
from ._models import (
    DEFAULT_ASPECT_RATIO,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    AspectRatio,
    GeneratedImage,
    GenerationRequest,
    ImageInput,
    ImageSize,
    ModelName,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
)
from ._poller import DurationStats, PollScheduler, PollTimer
from ._retry import Backoff
from ._submitter import SubmitHooks, Submitter, note_abandoned
from ._task import Task, TaskState
from ._transport import (
    HOPELESS_ERRORS,
    NETWORK_ERRORS,
    REQUEST_ATTEMPT,
    Transport,
    logger,
    write_trace,
)
from ._wire import RESULT_PATH, decode_answer, result_body, structure_snapshot

DEFAULT_BASE_URL = "https://nanobananapro.cloud"
DEFAULT_MAX_CONCURRENCY = 8
DEFAULT_MAX_CONNECTIONS = 64
#: Requests held at once by fan-out when the limiter has no concurrency limit.
DEFAULT_FANOUT_WINDOW = 128
API_KEY_ENV = "NANOBANANA_API_KEY"
BASE_URL_ENV = "NANOBANANA_BASE_URL"
#: Divides poll delays when set: match the speed of an emulator (`nanobanana emulator` prints it).
POLL_SPEED_ENV = "NANOBANANA_POLL_SPEED"


def _env_poll_speed() -> float:
    raw = os.environ.get(POLL_SPEED_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        speed = float(raw)
    except ValueError:
        speed = float("nan")
    if not speed > 0 or speed == float("inf"):
        raise InvalidRequestError(POLL_SPEED_ENV, f"must be a positive number; got {raw!r}")
    return speed


#: Statuses below 500 that a poll may simply repeat (every 5xx may be repeated too).
_RETRY_POLL_STATUSES = frozenset({408, 425, 429})
#: The deadline of the task whose poll is passing the gate (the gate must not outwait it).
_GATE_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "nanobanana_gate_deadline", default=None
)


class _Retry(Exception):
    """A poll failure worth another try; carries the error to raise if tries run out."""

    def __init__(self, error: NanoBananaError) -> None:
        super().__init__(str(error))
        self.error = error


class _GateTimeout(Exception):
    """A poll's wait in the gate (a pause, the rate cap) reached its task's deadline."""


class Client:
    """An asyncio session with the Nano Banana API.

    Args:
        api_key: The key; defaults to `$NANOBANANA_API_KEY`.
        base_url: Defaults to `$NANOBANANA_BASE_URL`, then `https://nanobananapro.cloud`.
        max_concurrency: Generations in flight at once (ignored when `limiter` is given).
        poll: Bounds of the adaptive poll timing; default `PollPolicy()`, with its `speed` from
            `$NANOBANANA_POLL_SPEED` when set (what `nanobanana emulator` prints).
        retry: Retries of safe requests.
        timeouts: Network timeouts and the per-task deadline.
        limiter: A `Limiter` shared with other clients of the same key.
        session: An aiohttp session to use (left open on close); by default the client makes one.
            Make it with ``trace_configs=[Client.trace_config()]`` so that a create counts as sent
            only once its bytes are written; without it, a create counts as sent as it starts.
        proxy: An HTTP proxy URL (proxy environment variables are honoured anyway).
        ssl: An `ssl.SSLContext`, or False to skip verification; default: system CAs.
        max_connections: Size of the HTTP connection pool.
        max_download_bytes: Largest image a download accepts.
        max_reply_bytes: Largest API answer read; a larger one is a `ProtocolError`.
        max_credits: A budget: a submit that could pass it raises `BudgetExceededError` unsent.
            With a budget (here or in `limiter`), a model without a known price is refused.
        prices: Credits per create by model, merged over the documented ones (`MODEL_COSTS`):
            the price of a model the package does not know, or a new price of a known one.
        seed: Seeds the jitter of polls and retries (for reproducible tests).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        max_concurrency: int | None = DEFAULT_MAX_CONCURRENCY,
        poll: PollPolicy | None = None,
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
        prices: Mapping[str, int] | None = None,
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
        if poll is None:
            poll = PollPolicy(speed=_env_poll_speed())
        positive_int("max_connections", max_connections)
        positive_int("max_download_bytes", max_download_bytes)
        if max_credits is not None and (
            isinstance(max_credits, bool) or not isinstance(max_credits, int) or max_credits < 0
        ):
            raise InvalidRequestError("max_credits", "must be a non-negative integer, or None")
        for name, value in (("poll", poll), ("retry", retry), ("timeouts", timeouts)):
            kind = {"poll": PollPolicy, "retry": RetryPolicy, "timeouts": Timeouts}[name]
            if not isinstance(value, kind):
                raise InvalidRequestError(name, f"must be a {kind.__name__}; got {value!r}")
        if limiter is not None and not isinstance(limiter, BaseLimiter):
            raise InvalidRequestError("limiter", f"must be a BaseLimiter; got {limiter!r}")
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
        self._credits = CreditLedger(
            max_credits,
            prices=check_prices(prices),
            shared_budget=self._limiter.max_credits is not None,
        )
        self._stats = DurationStats()
        self._timer = PollTimer(poll, self._stats, self._rng)
        self._scheduler = PollScheduler(
            self._poll, concurrency=max_connections, on_crash=self._poll_crashed
        )
        #: The client's one task group: polls, create attempts, held slots, limiter give-backs.
        self._host = TaskHost("nanobanana", on_loop_end=self._close_on_loop)
        self._tasks: dict[str, TaskState] = {}
        self._retry_listeners: list[Callable[[RetryEvent], None]] = []
        self._submitter = Submitter(
            transport=self._transport,
            limiter=self._limiter,
            credits=self._credits,
            retry=retry,
            rng=self._rng,
            track=self._track_created,
            notify=self._notify_retry,
            pause=self._limiter.pause,
            host=self._host,
            hold=self._uncertain_hold,
        )
        self._downloader = Downloader(
            lambda: self._transport.session,
            self._transport.download_slots,
            timeout=timeouts.download,
            max_bytes=max_download_bytes,
            retry=retry,
            rng=self._rng,
            on_retry=lambda attempt, wait, cause, url: self._notify_retry(
                "download", attempt, wait, cause, None
            ),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.Client(base_url={str(self._transport.base_url)!r}, "
            f"in_flight={len(self._tasks)}, closed={self._closed})"
        )

    @staticmethod
    def trace_config() -> aiohttp.TraceConfig:
        """The trace config a session given as ``session=`` needs for creates to be told apart.

        ``aiohttp.ClientSession(trace_configs=[nb.Client.trace_config()])``: with it, a create
        that the client's closing (or a cancellation) stops before its first byte is written
        counts as not sent (`ClientClosedError`, nothing charged) instead of uncertain.
        """
        return write_trace()

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        self._check()
        await self._host.started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Client:
        raise TypeError(
            "nanobanana_async.Client is asynchronous: use `async with nb.Client() as client:` "
            "inside an async function run by asyncio.run() (in Jupyter or `python -m asyncio`, "
            "top-level `await` works too)"
        )

    def __exit__(self, *exc_info: object) -> None:
        """Never reached: `__enter__` refuses synchronous use."""

    async def aclose(self) -> None:
        """Stop polling, wake every waiter with `ClientClosedError`, free every slot and socket.

        When it returns, no task the client started is still running. Runs to its end even if
        the caller is cancelled meanwhile; a second call waits for the first.
        """
        if self._closing is None:
            if self._closed:
                return  # closed by its task host as its event loop ended
            self._closed = True
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if self._loop is not None and running is not self._loop:
                # The loop this client ran on has ended (a later asyncio.run): its task host
                # closed the session as that loop shut down; nothing of that loop may be touched.
                return
            # Its own task: closing must finish even if the caller is cancelled meanwhile.
            self._closing = asyncio.ensure_future(self._close_all())
        await run_to_end(self._closing)

    async def _close_all(self) -> None:
        # Wake the waiting submits, end the tracked tasks (their slots go back through the
        # group, which is still open), then cancel the group and wait for everything in it.
        self._submitter.close()
        self._end_all()
        await self._host.aclose()
        await self._transport.aclose()

    def _end_all(self) -> None:
        tasks, self._tasks = self._tasks, {}
        for state in tasks.values():
            self._end(state, ClientClosedError(f"the client closed before task {state.id} ended"))

    async def _close_on_loop(self) -> None:
        # The event loop is ending with the client open: the group is being cancelled already.
        self._closed = True
        self._submitter.close()
        self._end_all()
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
    def prices(self) -> Mapping[str, int]:
        """Credits per create by model: `MODEL_COSTS` merged with the `prices=` given."""
        return self._credits.prices

    @property
    def poll_policy(self) -> PollPolicy:
        """The bounds of this client's poll timing (its `speed` may come from the environment)."""
        return self._poll_policy

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
        if self._limiter.ready_nowait(kind):
            return  # no pause, a token at hand: the usual case costs no wait and no scope
        deadline = _GATE_DEADLINE.get() if kind == "poll" else None
        if deadline is None:
            await self._limiter.ready(kind)
            return
        # A poll never outwaits its task's deadline in a pause or behind the rate cap.
        with anyio.move_on_after(deadline - asyncio.get_running_loop().time()) as scope:
            await self._limiter.ready(kind)
        if scope.cancelled_caught:
            raise _GateTimeout

    def _check(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ClientStateError(
                "nanobanana_async needs a running asyncio event loop (aiohttp is asyncio-only): "
                "use asyncio.run(), or anyio.run(..., backend='asyncio'); trio is not supported"
            ) from None
        if self._loop is not None and loop is not self._loop:
            raise ClientStateError(
                "this client belongs to another event loop; make one client per event loop"
            )
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._loop is None:
            self._loop = loop
            self._host.open(loop)
            self._host.start_soon(self._scheduler.run, name="nanobanana-poller")

    # --- submitting ------------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str | GenerationRequest,
        *,
        model: ModelName = DEFAULT_MODEL,
        aspect_ratio: AspectRatio = DEFAULT_ASPECT_RATIO,
        image_size: ImageSize = DEFAULT_IMAGE_SIZE,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...] | None = None,
        hooks: SubmitHooks | None = None,
    ) -> Task:
        """Create a generation task and return it as soon as the API answers.

        Waits for a slot of the limiter first (not charged to any timeout). The create is re-sent
        only when it provably never reached the server. *hooks* are called right before the body
        leaves (and may veto it) and with the task as soon as it exists.

        Raises:
            InvalidRequestError: the input breaks a rule of the API; nothing was sent.
            BudgetExceededError: the create could pass a credit budget; nothing was sent.
            SubmitAbandonedError: a hook vetoed the create; nothing was sent.
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
        return await self._submitter.submit(request, hooks)

    async def generate(
        self,
        prompt: str | GenerationRequest,
        *,
        model: ModelName = DEFAULT_MODEL,
        aspect_ratio: AspectRatio = DEFAULT_ASPECT_RATIO,
        image_size: ImageSize = DEFAULT_IMAGE_SIZE,
        images: ImageInput | list[ImageInput] | tuple[ImageInput, ...] | None = None,
        timeout: float | None = None,
    ) -> TaskResult:
        """Submit a generation and wait for its result (`submit` then `Task.wait`).

        Cancelled after the create was answered, it logs the task id at WARNING and puts it in
        the `CancelledError`'s message: the task is paid for and stays tracked
        (`client.task(id)` attaches to it again).
        """
        task = await self.submit(
            prompt, model=model, aspect_ratio=aspect_ratio, image_size=image_size, images=images
        )
        try:
            return await task.wait(timeout)
        except asyncio.CancelledError as exc:
            note_abandoned(exc, task.id, "generate()")
            raise

    def _uncertain_hold(self, request: GenerationRequest) -> float:
        return uncertain_hold(
            request.model,
            request.image_size,
            speed=self._poll_policy.speed,
            deadline=self._timeouts.task,
        )

    def _track_created(
        self, snapshot: TaskSnapshot, request: GenerationRequest, lease: Lease, charged: int
    ) -> Task:
        state = self._track(snapshot, request=request, lease=lease, charged=charged)
        return Task(state)

    def _track(
        self,
        snapshot: TaskSnapshot,
        *,
        request: GenerationRequest | None,
        lease: Lease | None,
        charged: int = 0,
        first_delay: float | None = None,
    ) -> TaskState:
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = self._timeouts.task
        state = TaskState(
            self._bind(snapshot),
            loop=loop,
            model=request.model if request is not None else None,
            image_size=request.image_size if request is not None else None,
            submitted_at=now,
            deadline=None if deadline is None else now + deadline,
            lease=lease,
        )
        if charged:
            state.cost = state.charged = charged
        if snapshot.is_terminal:
            # Answered as already done: a failed create is refunded by the service.
            self._update(state, snapshot, now)
            return state
        if self._closed:
            # Created as the client closes (after its tasks were ended): nothing will poll it.
            self._end(state, ClientClosedError(f"the client closed before task {state.id} ended"))
            return state
        self._tasks[state.id] = state
        delay = self._timer.first_delay(state) if first_delay is None else first_delay
        self._schedule(state, now + delay)
        return state

    def _schedule(self, state: TaskState, due: float) -> None:
        if state.deadline is not None and due > state.deadline:
            due = state.deadline
        self._scheduler.schedule(state, due)

    # --- polling ---------------------------------------------------------------------------------

    async def _poll(self, state: TaskState) -> None:
        """Poll one tracked task once (called by the scheduler) and plan what comes next."""
        if state.done:
            return
        loop = asyncio.get_running_loop()
        try:
            token = _GATE_DEADLINE.set(state.deadline)
            if state.backoff is not None:  # for the transport's wait notices
                REQUEST_ATTEMPT.set(("result", state.id, state.backoff.attempt + 1))
            try:
                snapshot = await self._poll_once(state.id)
            finally:
                _GATE_DEADLINE.reset(token)
        except _GateTimeout:
            self._end(state, self._deadline_error(state))
            return
        except _Retry as retry:
            if state.backoff is None:
                state.backoff = Backoff(self._retry, self._rng, clock=loop.time)
            backoff = state.backoff
            wait = backoff.next_wait(retry.error)
            if backoff.pause:
                await self._limiter.pause(backoff.pause)
            # A run of failed polls is bounded by the retry policy, and by the task's deadline.
            if wait is None or (state.deadline is not None and loop.time() + wait > state.deadline):
                self._end(state, retry.error)
                return
            self._notify_retry("result", backoff.attempt, wait, retry.error, state.id)
            self._schedule(state, loop.time() + wait)
            return
        except NanoBananaError as exc:
            self._end(state, exc)
            return
        state.backoff = None
        lease = state.lease
        if lease is not None and not snapshot.is_terminal:
            # A shared store's leases expire (so a crashed worker frees its slots): each poll of a
            # live task keeps its lease alive. A renewal never ends a task that is paid for.
            try:
                await self._limiter.renew(lease)
            except Exception:
                logger.exception("renewing the limiter lease of task %s failed", state.id)
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
            return self._bind(structure_snapshot(data, task_id=task_id, body=body))
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

    def _deadline_error(self, state: TaskState) -> TaskTimeoutError:
        return TaskTimeoutError(
            f"task {state.id} passed the client's task deadline of {self._timeouts.task} s "
            f"(last progress {state.snapshot.progress}%)",
            task_id=state.id,
        )

    def _update(self, state: TaskState, snapshot: TaskSnapshot, now: float) -> None:
        old = state.snapshot
        if snapshot.credits_cost is not None and state.cost is None:
            state.cost = snapshot.credits_cost
        moved = snapshot.progress != old.progress
        if snapshot.is_terminal:
            self._release(state)  # before the waiters wake, so that they find the slot free
        if moved or snapshot.status is not old.status or snapshot.results != old.results:
            if old.progress == 0 and snapshot.progress > 0:
                state.first_progress = (now, snapshot.progress)
            state.publish(snapshot)
        if snapshot.is_terminal:
            if snapshot.status is TaskStatus.FAILED and state.charged:
                # The service refunds failed tasks (only what this client paid counts here).
                self._credits.refund(state.charged)
                self._host.start_settle(self._limiter.refund, state.charged)
            if snapshot.status is TaskStatus.SUCCEEDED and state.model is not None:
                self._timer.finished(state, now)
            self._end(state)
            return
        if state.deadline is not None and now >= state.deadline:
            self._end(state, self._deadline_error(state))
            return
        self._schedule(state, now + self._timer.next_delay(state, now, moved))

    def _poll_crashed(self, state: TaskState, exc: BaseException) -> None:
        # A bug (ours, a hook's or a limiter's) must not leave a task unpolled holding its slot.
        logger.error("polling task %s failed unexpectedly", state.id, exc_info=exc)
        self._end(state, exc)

    def _release(self, state: TaskState) -> None:
        lease, state.lease = state.lease, None
        if lease is not None and not self._limiter.release_nowait(lease):
            self._host.start_settle(self._limiter.release, lease)

    def _end(self, state: TaskState, error: BaseException | None = None) -> None:
        self._tasks.pop(state.id, None)
        # Started before the waiters wake, so that they find the slot free already.
        self._release(state)
        if isinstance(error, NanoBananaError) and error.task_id is None:
            error.task_id = state.id
        state.finish(error)

    def _notify_retry(
        self, endpoint: str, attempt: int, wait: float, cause: BaseException, task_id: str | None
    ) -> None:
        # INFO: a retry is a wait the user should hear of (views showing retries drop the record).
        logger.info(
            "retrying %s (attempt %d, task %s) in %.2f s after %s",
            endpoint,
            attempt + 1,
            task_id,
            wait,
            cause,
            extra={"nanobanana_retry": True},
        )
        REQUEST_ATTEMPT.set((endpoint, task_id, attempt + 1))
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
        limit = self._limiter.max_concurrency
        # Twice the slots: the next submits already wait for a slot when one frees.
        return 2 * (limit if limit is not None else DEFAULT_FANOUT_WINDOW // 2)

    @overload
    def as_completed(
        self, requests: Requests, *, return_exceptions: Literal[False] = False
    ) -> AsyncGenerator[Task, None]: ...

    @overload
    def as_completed(
        self, requests: Requests, *, return_exceptions: Literal[True]
    ) -> AsyncGenerator[Task | NanoBananaError, None]: ...

    async def as_completed(
        self, requests: Requests, *, return_exceptions: bool = False
    ) -> AsyncGenerator[Task | NanoBananaError, None]:
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
                        results[index] = outcome.result()
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

        The client polls it at once, then until it is terminal; until the first answer its
        snapshot's status is `TaskStatus.UNKNOWN` (`updates()` yields the first real one). It
        holds no slot of the limiter.
        """
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequestError("task_id", "must be a non-empty string")
        self._check()
        state = self._tasks.get(task_id)
        if state is None:
            state = self._track(
                TaskSnapshot(id=task_id, status=TaskStatus.UNKNOWN),
                request=None,
                lease=None,
                first_delay=0.0,
            )
        return Task(state)

    async def get(self, task_id: str) -> TaskSnapshot:
        """Poll a task once (retrying safe failures) and return its snapshot; track nothing."""
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequestError("task_id", "must be a non-empty string")
        self._check()
        backoff = Backoff(self._retry, self._rng)
        while True:
            self._check()
            try:
                return await self._poll_once(task_id)
            except _Retry as retry:
                wait = backoff.next_wait(retry.error)
                if backoff.pause:
                    await self._limiter.pause(backoff.pause)
                if wait is None:
                    raise retry.error from retry
                self._notify_retry("result", backoff.attempt, wait, retry.error, task_id)
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
