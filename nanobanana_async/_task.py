"""`Task`: a handle on one generation the client tracks until it is terminal."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import ClientStateError, TaskFailedError, TaskTimeoutError
from ._models import TaskResult, TaskSnapshot, TaskStatus

if TYPE_CHECKING:
    from ._limiter import Lease
    from ._retry import Backoff


class TaskState:
    """Everything the client knows about one tracked task; shared by all its `Task` handles.

    Slotted and lazily allocated (no event until someone waits) so that thousands cost little.
    """

    __slots__ = (
        "backoff",
        "charged",
        "cost",
        "deadline",
        "done",
        "error",
        "first_progress",
        "id",
        "image_size",
        "lease",
        "linear_hi",
        "linear_lo",
        "loop",
        "model",
        "poll_generation",
        "snapshot",
        "submitted_at",
        "version",
        "waiters",
    )

    def __init__(
        self,
        snapshot: TaskSnapshot,
        *,
        loop: asyncio.AbstractEventLoop,
        model: str | None,
        image_size: str | None,
        submitted_at: float,
        deadline: float | None,
        lease: Lease | None,
    ) -> None:
        self.id = snapshot.id
        self.snapshot = snapshot
        self.loop = loop
        self.model = model
        self.image_size = image_size
        self.submitted_at = submitted_at
        self.deadline = deadline
        self.lease = lease
        self.cost = snapshot.credits_cost
        #: What this client paid for the create (0 for tasks attached by id).
        self.charged = 0
        self.done = False
        self.error: BaseException | None = None
        self.version = 0
        self.waiters: list[asyncio.Future[None]] | None = None
        self.poll_generation = 0
        #: The retries of the current run of failed polls, if any.
        self.backoff: Backoff | None = None
        self.first_progress: tuple[float, int] = (submitted_at, 0)
        #: Bounds of the duration (seconds from submitted_at) that every progress seen so far
        #: allows if progress is linear from submit; lo > hi once it was seen not to be.
        self.linear_lo = 0.0
        self.linear_hi = math.inf

    def publish(self, snapshot: TaskSnapshot) -> None:
        """Store a new snapshot and wake everyone waiting for a change."""
        self.snapshot = snapshot
        self.version += 1
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        """Mark the task terminal (with *error* when it ended without a usable snapshot)."""
        if self.done:
            return
        self.done = True
        self.error = error
        self.version += 1
        self._wake()

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, None
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def changed(self, since: int) -> None:
        """Return once `version` has moved past *since*."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            raise ClientStateError(
                f"task {self.id} belongs to another event loop; await it where its client runs"
            )
        while self.version == since:
            waiter = loop.create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if self.waiters is not None and waiter in self.waiters:
                    self.waiters.remove(waiter)


class Task:
    """A generation the client tracks until it succeeds or fails.

    Get one from `Client.submit` or `Client.task`. Any number of coroutines may `wait()` on it or
    iterate `updates()` at once; `await task` is `await task.wait()`.
    """

    __slots__ = ("_state",)

    def __init__(self, state: TaskState) -> None:
        self._state = state

    def __repr__(self) -> str:
        snap = self._state.snapshot
        return (
            f"nanobanana_async.Task(id={self.id!r}, status={snap.status.value!r}, "
            f"progress={snap.progress})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other._state is self._state

    def __hash__(self) -> int:
        return hash(self._state.id)

    @property
    def id(self) -> str:
        """The task id the API gave; known as soon as `submit` returns."""
        return self._state.id

    @property
    def snapshot(self) -> TaskSnapshot:
        """The latest snapshot the client has seen."""
        return self._state.snapshot

    @property
    def credits_cost(self) -> int | None:
        """Credits the create was charged (from its answer), or None if unknown (attached tasks)."""
        return self._state.cost

    def done(self) -> bool:
        """Whether the task is terminal (succeeded, failed, or given up on)."""
        return self._state.done

    async def join(self) -> None:
        """Wait until the task is terminal, without raising its outcome (see `result()`)."""
        state = self._state
        while not state.done:
            await state.changed(state.version)

    def result(self) -> TaskResult:
        """Return the result of a terminal task, or raise why it has none.

        Raises:
            ClientStateError: the task is not terminal yet.
            TaskFailedError: the task failed.
            NanoBananaError: the task ended without a result (deadline, closed client, polls).
        """
        state = self._state
        if not state.done:
            raise ClientStateError(f"task {state.id} is not done yet; await task.wait() instead")
        if state.error is not None:
            raise state.error
        snap = state.snapshot
        if snap.status is TaskStatus.FAILED:
            raise TaskFailedError(snap)
        return TaskResult(
            task_id=snap.id, images=snap.results, snapshot=snap, credits_cost=state.cost
        )

    async def wait(self, timeout: float | None = None) -> TaskResult:
        """Wait until the task ends and return its result.

        Raises:
            TaskFailedError: the task failed.
            TaskTimeoutError: *timeout* (or the client's task deadline) passed first; after a
                *timeout* the task stays tracked and can be awaited again.
        """
        state = self._state
        if not state.done:
            try:
                with anyio.fail_after(timeout):
                    while not state.done:
                        await state.changed(state.version)
            except TimeoutError:
                raise TaskTimeoutError(
                    f"task {state.id} not done within {timeout} s (last progress "
                    f"{state.snapshot.progress}%)",
                    task_id=state.id,
                ) from None
        return self.result()

    def __await__(self) -> Generator[Any, None, TaskResult]:
        return self.wait().__await__()

    async def updates(self) -> AsyncGenerator[TaskSnapshot, None]:
        """Yield each new snapshot, ending after the terminal one.

        A failed task ends the iteration normally (its snapshot says so); a task that ended
        without a terminal snapshot (deadline, closed client, a poll error) raises that error.
        """
        state = self._state
        seen = -1
        while True:
            version = state.version
            if version != seen:
                seen = version
                snap = state.snapshot
                if state.done and state.error is not None and not snap.is_terminal:
                    raise state.error
                yield snap
                if snap.is_terminal or state.done:
                    return
                continue
            await state.changed(version)
