"""What a batch reports as it runs: events for progress displays, and how each item ended."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from ._config import RetryEvent
from ._errors import RateLimitError
from ._models import TaskResult, TaskStatus
from ._task import Task

#: Characters of the prompt kept in journal records and events.
PROMPT_EXCERPT = 200


def prompt_excerpt(prompt: str) -> str:
    """Return *prompt* cut to `PROMPT_EXCERPT` characters, for records and events."""
    return prompt if len(prompt) <= PROMPT_EXCERPT else prompt[: PROMPT_EXCERPT - 1] + "…"


class BatchEventKind(str, enum.Enum):
    """What a `BatchEvent` reports.

    Every item read gets exactly one of SUCCEEDED, FAILED, UNCERTAIN or SKIPPED, unless the batch
    is stopped first.
    """

    SUBMITTED = "submitted"
    RESUMED = "resumed"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    SKIPPED = "skipped"
    RETRYING = "retrying"
    RATE_LIMITED = "rate_limited"

    def __str__(self) -> str:
        return self.value


class BatchItemStatus(str, enum.Enum):
    """Where one item of a batch ended.

    SKIPPED items were not sent (budget or credits ran out); RUNNING items were stopped while
    their task ran and PENDING ones before they were sent: a rerun picks all three up.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    SKIPPED = "skipped"
    RUNNING = "running"
    PENDING = "pending"

    def __str__(self) -> str:
        return self.value


@attrs.frozen(kw_only=True)
class BatchEvent:
    """Something that happened in a batch, for progress displays.

    `position` is the item's index in the input (None for a retry of a create, which cannot be
    told apart); `earlier` marks outcomes read from the journal of an earlier run.
    """

    kind: BatchEventKind
    position: int | None = None
    key: str | None = None
    prompt: str | None = None
    task_id: str | None = None
    progress: int | None = None
    cost: int | None = None
    paths: tuple[Path, ...] = ()
    message: str | None = None
    wait: float | None = None
    earlier: bool = False


@attrs.frozen(kw_only=True)
class BatchItem:
    """How one item of a batch ended; `cost` is in credits (an estimate for uncertain items)."""

    position: int
    key: str
    prompt: str
    status: BatchItemStatus
    task_id: str | None = None
    cost: int | None = None
    paths: tuple[Path, ...] = ()
    error: str | None = None
    earlier: bool = False


@attrs.frozen(kw_only=True)
class BatchSummary:
    """The outcome of a batch run: every item read, in input order, and the totals.

    `items` is a read-only sequence that builds each `BatchItem` as it is read, so that the
    summary of a batch of 100,000 prompts stays small.

    `credits_spent` is what this run spent as the client counts it (uncertain creates count as
    charged); `credits_total` what the batch's items cost in all runs (refunds excluded).
    """

    items: Sequence[BatchItem]
    succeeded: int
    failed: int
    uncertain: int
    skipped: int
    running: int
    pending: int
    credits_spent: int
    credits_total: int
    elapsed: float
    interrupted: bool
    out_dir: Path
    journal: Path

    @property
    def total(self) -> int:
        """How many items were read."""
        return len(self.items)

    @property
    def ok(self) -> bool:
        """Whether every item read has its images and the run was not stopped."""
        return self.succeeded == self.total and not self.interrupted


def retry_event(event: RetryEvent, position: int | None = None) -> BatchEvent:
    """Return the batch event for a client's retry: `rate_limited` for a 429, else `retrying`."""
    kind = (
        BatchEventKind.RATE_LIMITED
        if isinstance(event.cause, RateLimitError)
        else BatchEventKind.RETRYING
    )
    return BatchEvent(
        kind=kind,
        position=position,
        task_id=event.task_id,
        wait=event.wait,
        message=f"{event.endpoint}: {event.cause}",
    )


async def follow(
    task: Task,
    emit: Callable[[BatchEvent], None],
    *,
    position: int | None = None,
    key: str | None = None,
    prompt: str | None = None,
) -> TaskResult:
    """Emit a `progress` event at each change of the task's progress; return its result.

    A task not polled yet (status `unknown`) shows no progress; a task found finished shows its
    last progress (100 for a success), not 0.
    """
    shown = -1
    async for snapshot in task.updates():
        if snapshot.status is TaskStatus.UNKNOWN or snapshot.progress == shown:
            continue
        shown = snapshot.progress
        emit(
            BatchEvent(
                kind=BatchEventKind.PROGRESS,
                position=position,
                key=key,
                prompt=None if prompt is None else prompt_excerpt(prompt),
                task_id=task.id,
                progress=shown,
            )
        )
    return await task.wait()
