"""What the emulator remembers: tasks, per-key ledgers and the request log."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, Literal

import attrs

__all__ = ["EmulatedTask", "Endpoint", "Ledger", "ProgressMode", "RequestRecord", "TaskStatus"]

Endpoint = Literal["create", "result", "file", "other"]
ProgressMode = Literal["smooth", "stuck", "jumpy"]
TaskStatus = Literal["running", "succeeded", "failed"]


@attrs.frozen
class EmulatedTask:
    """One generation task; its status and progress follow from emulated time.

    Everything random about the task (duration, outcome, progress curve) is drawn
    when it is created, so reading it never changes it.

    Attributes:
        id: The task id, like ``3-<uuid4>``.
        model: The model asked for.
        prompt: The prompt, echoed back as each result's ``content``.
        mode: ``text-to-image`` or ``image-to-image``.
        aspect_ratio: The ratio asked for (``auto`` when omitted).
        image_size: ``1K``, ``2K`` or ``4K``.
        reference_count: Number of reference images (files, URLs and data URLs).
        credits_cost: Credits charged at creation.
        created_at: Emulated time of creation, in seconds.
        duration: Emulated seconds from creation to the end.
        outcome: How the task ends.
        failure_reason: The ``failure_reason`` reported when it fails, else None.
        error: The human message reported when it fails, else None.
        progress_mode: How ``progress`` moves while running.
    """

    id: str
    model: str
    prompt: str
    mode: str
    aspect_ratio: str
    image_size: str
    reference_count: int
    credits_cost: int
    created_at: float
    duration: float
    outcome: Literal["succeeded", "failed"]
    failure_reason: str | None
    error: str | None
    progress_mode: ProgressMode
    # (fraction of the duration, progress from then on) for the jumpy mode.
    _jumps: tuple[tuple[float, int], ...] = attrs.field(repr=False)
    _clock: Callable[[], float] = attrs.field(repr=False, eq=False)
    _owner: Ledger = attrs.field(repr=False, eq=False)

    @property
    def end_time(self) -> float:
        """Emulated time at which the task succeeds or fails."""
        return self.created_at + self.duration

    @property
    def status(self) -> TaskStatus:
        """The status a poll would report now."""
        return self.status_at(self._clock())

    @property
    def progress(self) -> int:
        """The progress a poll would report now."""
        return self.progress_at(self._clock())

    def status_at(self, now: float) -> TaskStatus:
        """Return the status at emulated time ``now``."""
        return "running" if now < self.end_time else self.outcome

    def progress_at(self, now: float) -> int:
        """Return the progress (0-100) at emulated time ``now``.

        A succeeded task reports 100; a failed one keeps the last value it
        showed while running.
        """
        if now >= self.end_time and self.outcome == "succeeded":
            return 100
        if self.duration <= 0:
            fraction = 1.0
        else:
            fraction = min(1.0, max(0.0, (now - self.created_at) / self.duration))
        if self.progress_mode == "smooth":
            return min(99, int(fraction * 100))
        if self.progress_mode == "stuck":
            return 0
        value = 0
        for at, reached in self._jumps:
            if fraction >= at:
                value = reached
        return value


@attrs.define(eq=False, repr=False)
class Ledger:
    """Credits and traffic of one API key: a live view, always up to date when read.

    Refunds of failed tasks are booked at the emulated moment the task fails,
    whether or not anyone polls it.
    """

    _balance: int | None
    _clock: Callable[[], float]
    _creates_received: int = 0
    _tasks_created: int = 0
    _credits_charged: int = 0
    _credits_refunded: int = 0
    _max_running: int = 0
    _polls_received: int = 0
    # Heap of (end time, sequence, task) for tasks not yet at their end.
    _pending: list[tuple[float, int, EmulatedTask]] = attrs.field(factory=list)

    @property
    def balance(self) -> int | None:
        """Credits left, or None when the key is unlimited."""
        self._settle()
        return self._balance

    @property
    def creates_received(self) -> int:
        """Create requests with this key that reached processing, valid or not."""
        return self._creates_received

    @property
    def tasks_created(self) -> int:
        """Tasks created (and charged) for this key."""
        return self._tasks_created

    @property
    def credits_charged(self) -> int:
        """Credits charged by creates, before refunds."""
        return self._credits_charged

    @property
    def credits_refunded(self) -> int:
        """Credits given back for failed tasks."""
        self._settle()
        return self._credits_refunded

    @property
    def running(self) -> int:
        """Tasks created and not yet at their end time."""
        self._settle()
        return len(self._pending)

    @property
    def max_running(self) -> int:
        """The largest ``running`` seen, evaluated at each create."""
        return self._max_running

    @property
    def polls_received(self) -> int:
        """Result requests with this key that reached processing."""
        return self._polls_received

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in (
                "balance",
                "creates_received",
                "tasks_created",
                "credits_charged",
                "credits_refunded",
                "running",
                "max_running",
                "polls_received",
            )
        )
        return f"{type(self).__name__}({fields})"

    def _settle(self) -> None:
        now = self._clock()
        while self._pending and self._pending[0][0] <= now:
            _, _, task = heapq.heappop(self._pending)
            if task.outcome == "failed":
                self._credits_refunded += task.credits_cost
                if self._balance is not None:
                    self._balance += task.credits_cost

    def _can_afford(self, cost: int) -> bool:
        self._settle()
        return self._balance is None or self._balance >= cost

    def _charge(self, task: EmulatedTask) -> None:
        self._settle()
        self._tasks_created += 1
        self._credits_charged += task.credits_cost
        if self._balance is not None:
            self._balance -= task.credits_cost
        heapq.heappush(self._pending, (task.end_time, self._tasks_created, task))
        self._max_running = max(self._max_running, len(self._pending))

    def _set_balance(self, credits: int | None) -> None:
        self._settle()
        self._balance = credits


@attrs.frozen
class RequestRecord:
    """One HTTP request the emulator received (the raw API key is never kept).

    Attributes:
        time: Emulated time of arrival, in seconds.
        real_time: ``time.monotonic()`` at arrival.
        method: HTTP method.
        path: URL path, without the query string.
        endpoint: Which endpoint the request addressed.
        api_key_valid: Whether it carried ``Authorization: Bearer <a known key>``.
        status: HTTP status answered, or None when the connection was dropped or hung.
        task_id: The task created, polled or downloaded, if any.
        fields: A create's form or JSON fields (repeated ones as lists; file parts as
            a list of their file names under ``imageFile``), else None.
        fault: Name of the injected fault applied, if any.
    """

    time: float
    real_time: float
    method: str
    path: str
    endpoint: Endpoint
    api_key_valid: bool
    status: int | None
    task_id: str | None
    fields: dict[str, Any] | None
    fault: str | None
