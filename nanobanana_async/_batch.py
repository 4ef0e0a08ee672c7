"""Batch runs: fan-out jobs that save their images and survive crashes through a journal.

The journal is a JSONL file, one record per line, each written whole and fsynced before the batch
goes on. A record names the item by its key (a hash of its position and request) and holds its
state:

- ``submitting``: a create is about to leave; if nothing follows, it may have been charged.
- ``running``: the create answered; the task id is known.
- ``succeeded``: the images are saved (file names relative to the output folder).
- ``failed``: the service said the task failed (and refunded it).
- ``uncertain``: the create may have been charged but its answer was lost.
- ``unsent``: nothing was charged (refused, budget, network): a rerun sends it.

Running again with the same journal skips finished items, attaches running tasks by id (never
resubmitting them) and reports uncertain ones, which are sent again only on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import os
import re
import time
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Union

import anyio
import attrs
from anyio.abc import TaskGroup

from ._client import Client
from ._config import RetryEvent
from ._errors import (
    AuthenticationError,
    BudgetExceededError,
    ClientClosedError,
    ClientStateError,
    InsufficientCreditsError,
    InvalidRequestError,
    NanoBananaError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    SubmitAbandonedError,
    SubmitUncertainError,
    TaskFailedError,
)
from ._fanout import iterate
from ._inputs import MODEL_COSTS
from ._models import GenerationRequest, ImageInput, TaskResult
from ._submitter import SubmitHooks
from ._task import Task
from ._wire import structure, unstructure

logger = logging.getLogger("nanobanana_async")

#: One item of a batch: a request, a bare prompt, or an input that could not be read (reported
#: as failed at its position; the CLI passes unreadable lines this way).
BatchInput = Union[GenerationRequest, str, InvalidRequestError]
#: What a batch accepts: a plain or an async iterable, read lazily.
BatchRequests = Union[Iterable[BatchInput], AsyncIterable[BatchInput]]

#: Generations in flight when neither the batch nor the client's limiter says.
DEFAULT_BATCH_CONCURRENCY = 8
#: Downloads at once.
DEFAULT_MAX_DOWNLOADS = 4
#: The journal's file name in the output folder, unless another path is given.
JOURNAL_NAME = "journal.jsonl"
#: Characters of the prompt kept in file names.
SLUG_LENGTH = 40
#: Characters of the prompt kept in journal records and events.
_PROMPT_EXCERPT = 200

_STATES = frozenset({"submitting", "running", "succeeded", "failed", "uncertain", "unsent"})
#: Refusals that every further create would meet too: stop submitting, skip the rest.
_STOP_ERRORS: tuple[type[NanoBananaError], ...] = (
    BudgetExceededError,
    AuthenticationError,
    PermissionDeniedError,
    InsufficientCreditsError,
)


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

    `credits_spent` is what this run spent as the client counts it (uncertain creates count as
    charged); `credits_total` what the batch's items cost in all runs (refunds excluded).
    """

    items: tuple[BatchItem, ...]
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


@attrs.frozen(kw_only=True)
class _Record:
    """One journal line. Never holds a secret."""

    key: str
    position: int
    state: str
    prompt: str = ""
    model: str | None = None
    task_id: str | None = None
    cost: int | None = None
    files: tuple[str, ...] = ()
    error: str | None = None
    time: float = 0.0


# --- keys and names ----------------------------------------------------------------------------


def _reference_text(image: ImageInput) -> str:
    if isinstance(image, str):
        return image
    if isinstance(image, os.PathLike):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(image)).hexdigest()
    name = getattr(image, "name", None)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if image.seekable():
            start = image.tell()
            digest = hashlib.sha256(image.read()).hexdigest()
            image.seek(start)
            return "sha256:" + digest
    return f"file:{name}" if isinstance(name, str) else "stream"


def request_key(position: int, request: GenerationRequest) -> str:
    """Return the item's journal key: sha256 over the canonical JSON of position and request."""
    canonical = {
        "position": position,
        "prompt": request.prompt,
        "model": request.model,
        "aspect_ratio": request.aspect_ratio,
        "image_size": request.image_size,
        "images": [_reference_text(image) for image in request.images],
    }
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def slugify(text: str, limit: int = SLUG_LENGTH) -> str:
    """Return a lowercase ASCII file-name fragment of *text*, at most *limit* characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > limit:
        # Cut at a word boundary when one is not too far back.
        head = slug[: limit + 1]
        dash = head.rfind("-")
        slug = head[:dash] if dash >= limit // 2 else slug[:limit]
    return slug.rstrip("-") or "image"


def image_stem(position: int, prompt: str, n: int) -> str:
    """Return the stable file name (without suffix) of image *n* of the item at *position*."""
    return f"{position:05d}-{slugify(prompt)}-{n}"


def _excerpt(prompt: str) -> str:
    return prompt if len(prompt) <= _PROMPT_EXCERPT else prompt[: _PROMPT_EXCERPT - 1] + "…"


def _estimate(model: str | None) -> int:
    """What a create of *model* may have cost (the dearest known cost for unknown models)."""
    if model is not None and model in MODEL_COSTS:
        return MODEL_COSTS[model]
    return max(MODEL_COSTS.values())


# --- the journal -------------------------------------------------------------------------------


def _parse(line: bytes) -> _Record | None:
    try:
        data = json.loads(line)
        record: _Record = structure(data, _Record)
    except Exception:  # any unreadable line is skipped, whatever broke it
        return None
    return record if record.state in _STATES else None


def read_journal(path: str | os.PathLike[str]) -> dict[str, _Record]:
    """Return the last record of each key in the journal at *path* (empty if it is missing).

    Unreadable lines (a line torn by a crash) are skipped.
    """
    index: dict[str, _Record] = {}
    with contextlib.suppress(FileNotFoundError), Path(path).open("rb") as stream:
        for line in stream:
            record = _parse(line)
            if record is not None:
                index[record.key] = record
    return index


def journal_credits(path: str | os.PathLike[str]) -> int:
    """Return the credits the journal at *path* records as spent (refunds excluded).

    Creates whose answer was lost count at their model's price: they may have been charged.
    """
    total = 0
    for record in read_journal(path).values():
        if record.state in ("running", "succeeded"):
            total += record.cost or 0
        elif record.state in ("submitting", "uncertain"):
            total += record.cost if record.cost is not None else _estimate(record.model)
    return total


class _Journal:
    """The append-only journal: every record is written whole and fsynced, one at a time."""

    def __init__(self, path: Path, fd: int, index: dict[str, _Record]) -> None:
        self.path = path
        self.index = index
        self._fd: int | None = fd
        self._lock = anyio.Lock()

    @classmethod
    def open(cls, path: Path) -> _Journal:
        """Open the journal for appending, locked, and read it (dropping a torn last line)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags, 0o644)
        try:
            _lock(fd, path)
            good = 0
            with path.open("rb") as stream:
                for line in stream:
                    if not line.endswith(b"\n"):
                        break
                    good += len(line)
            if good != os.fstat(fd).st_size:
                # A crash tore the last line: nothing after it was written, so cut it off.
                os.ftruncate(fd, good)
            if created:
                _fsync_dir(path.parent)
            return cls(path, fd, read_journal(path))
        except BaseException:
            os.close(fd)
            raise

    def _write(self, data: bytes) -> None:
        # A create that answers after the batch stopped still records its task id: reopen.
        fd = self._fd if self._fd is not None else os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            if fd != self._fd:
                os.close(fd)

    async def write(self, record: _Record) -> None:
        """Append *record* and fsync it; a cancellation waits until it is on disk."""
        # Empty fields are left out: the lines stay short and read back to the same record.
        data = {k: v for k, v in unstructure(record).items() if v is not None and v != []}
        line = json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await anyio.to_thread.run_sync(self._write, line.encode())
        self.index[record.key] = record

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _lock(fd: int, path: Path) -> None:
    """Lock the journal for this process (where the platform can); the kernel frees it on exit."""
    try:
        import fcntl
    except ImportError:  # Windows: one batch per journal is up to the user
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InvalidRequestError(
            "journal", f"{path} is in use by another running batch; use one journal per batch"
        ) from None


def _fsync_dir(folder: Path) -> None:
    # Makes a new file's name durable too; not possible on every platform.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    """Emit a `progress` event at each change of the task's progress; return its result."""
    shown = -1
    async for snapshot in task.updates():
        if snapshot.is_terminal or snapshot.progress == shown:
            continue
        shown = snapshot.progress
        emit(
            BatchEvent(
                kind=BatchEventKind.PROGRESS,
                position=position,
                key=key,
                prompt=None if prompt is None else _excerpt(prompt),
                task_id=task.id,
                progress=shown,
            )
        )
    return await task.wait()


class _Slot:
    """One job's hold on a generation slot; releasing it twice is harmless."""

    __slots__ = ("_held", "_semaphore")

    def __init__(self, semaphore: anyio.Semaphore) -> None:
        self._semaphore = semaphore
        self._held = False

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._semaphore.release()


# --- the runner --------------------------------------------------------------------------------


class Batch:
    """A fan-out job: submit every request, save every image, journal every step.

    ```python
    async with nb.Client() as client:
        summary = await nb.Batch(client, prompts, "out").run(on_event=print)
    ```

    Images are saved as ``OUT/<position:05d>-<prompt slug>-<n>.<ext>``, downloaded as soon as each
    task succeeds. Running a batch again with the same journal resumes it (see the module doc).

    Args:
        client: The client to submit with. Give it `max_concurrency` at least *concurrency*: the
            journal marks a create as leaving just before `submit`, so a create queued inside the
            client's limiter when the process dies is reported uncertain on the next run.
        requests: `GenerationRequest`s or prompts (read lazily; an `InvalidRequestError` in their
            place is reported as failed at its position).
        out_dir: The folder for the images (made if missing).
        journal: The journal's path; default ``out_dir/journal.jsonl``.
        concurrency: Generations in flight at once; default the client's `max_concurrency`.
        max_downloads: Downloads at once.
        retry_uncertain: Send again the creates that may have been charged in an earlier run.
        retry_failed: Send again the items whose task failed in an earlier run.
    """

    def __init__(
        self,
        client: Client,
        requests: BatchRequests,
        out_dir: str | os.PathLike[str],
        *,
        journal: str | os.PathLike[str] | None = None,
        concurrency: int | None = None,
        max_downloads: int = DEFAULT_MAX_DOWNLOADS,
        retry_uncertain: bool = False,
        retry_failed: bool = False,
    ) -> None:
        if concurrency is None:
            limiter = client.limiter
            limit = limiter.max_concurrency
            concurrency = limit if limit is not None else DEFAULT_BATCH_CONCURRENCY
        if concurrency < 1:
            raise InvalidRequestError("concurrency", "must be at least 1")
        if max_downloads < 1:
            raise InvalidRequestError("max_downloads", "must be at least 1")
        self._client = client
        self._requests = requests
        self._out_dir = Path(out_dir)
        self._journal_path = Path(journal) if journal is not None else self._out_dir / JOURNAL_NAME
        self._concurrency = concurrency
        self._max_downloads = max_downloads
        self._retry_uncertain = retry_uncertain
        self._retry_failed = retry_failed
        self._on_event: Callable[[BatchEvent], None] | None = None
        self._started = False
        self._stopping = False
        self._no_more_creates: str | None = None
        self._scopes: set[anyio.CancelScope] = set()
        self._items: dict[int, BatchItem] = {}
        self._positions: dict[str, int] = {}
        self._summary: BatchSummary | None = None
        self._slots = anyio.Semaphore(concurrency)
        self._downloads = anyio.Semaphore(max_downloads)
        # Items started and not finished, bounded so that a huge input is read as it is used.
        self._window = anyio.Semaphore(concurrency + max_downloads)

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.Batch(out_dir={str(self._out_dir)!r}, "
            f"journal={str(self._journal_path)!r}, concurrency={self._concurrency})"
        )

    @property
    def out_dir(self) -> Path:
        """The folder the images are saved in."""
        return self._out_dir

    @property
    def journal(self) -> Path:
        """The journal's path."""
        return self._journal_path

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopping

    @property
    def summary(self) -> BatchSummary | None:
        """The summary, once the run has ended."""
        return self._summary

    def stop(self) -> None:
        """Stop cleanly: read no more input, send no more creates, stop waiting and downloading.

        Creates already on their way get their answer journaled first, so the journal stays
        consistent; `run()` then returns a summary with `interrupted` set.
        """
        self._stopping = True
        for scope in list(self._scopes):
            scope.cancel()

    async def events(self) -> AsyncIterator[BatchEvent]:
        """Run the batch, yielding its events; `summary` is set when the iteration ends.

        Leaving the loop early cancels the batch (the journal stays consistent).
        """
        queue: asyncio.Queue[BatchEvent | None] = asyncio.Queue()

        async def run() -> BatchSummary:
            try:
                return await self.run(on_event=queue.put_nowait)
            finally:
                queue.put_nowait(None)

        job = asyncio.get_running_loop().create_task(run())
        try:
            while (event := await queue.get()) is not None:
                yield event
            await job
        finally:
            if not job.done():
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)

    async def run(self, on_event: Callable[[BatchEvent], None] | None = None) -> BatchSummary:
        """Run the batch to the end (or until `stop()`); call *on_event* with each event."""
        if self._started:
            raise ClientStateError("a Batch runs once; make a new one to run again")
        if self._client.closed:
            raise ClientClosedError("the client is closed")
        self._started = True
        self._on_event = on_event
        started = time.monotonic()
        spent_before = self._client.credits.spent
        await anyio.Path(self._out_dir).mkdir(parents=True, exist_ok=True)
        journal = await anyio.to_thread.run_sync(_Journal.open, self._journal_path)
        remove_listener = self._client.add_retry_listener(self._on_retry)
        try:
            async with anyio.create_task_group() as group:
                with self._stoppable():
                    await self._produce(group, journal)
        finally:
            remove_listener()
            journal.close()
        items = tuple(self._items[position] for position in sorted(self._items))
        counts = dict.fromkeys(BatchItemStatus, 0)
        total = 0
        for item in items:
            counts[item.status] += 1
            if item.status is not BatchItemStatus.FAILED:
                total += item.cost or 0
        self._summary = BatchSummary(
            items=items,
            succeeded=counts[BatchItemStatus.SUCCEEDED],
            failed=counts[BatchItemStatus.FAILED],
            uncertain=counts[BatchItemStatus.UNCERTAIN],
            skipped=counts[BatchItemStatus.SKIPPED],
            running=counts[BatchItemStatus.RUNNING],
            pending=counts[BatchItemStatus.PENDING],
            credits_spent=self._client.credits.spent - spent_before,
            credits_total=total,
            elapsed=time.monotonic() - started,
            interrupted=self._stopping,
            out_dir=self._out_dir,
            journal=self._journal_path,
        )
        return self._summary

    # --- plumbing --------------------------------------------------------------------------------

    def _emit(self, event: BatchEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    @contextlib.contextmanager
    def _stoppable(self) -> Iterator[anyio.CancelScope]:
        """A scope that `stop()` cancels (at once if it was called already)."""
        scope = anyio.CancelScope()
        if self._stopping:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def _on_retry(self, event: RetryEvent) -> None:
        position = None
        if event.task_id is not None:
            position = self._positions.get(event.task_id)
            if position is None:
                return  # a task of the same client that is not this batch's
        try:
            self._emit(retry_event(event, position))
        except Exception:
            # Called from inside the client: a broken display must not break a poll.
            logger.exception("a batch event callback raised")

    def _finish(
        self,
        position: int,
        key: str,
        prompt: str,
        status: BatchItemStatus,
        *,
        task_id: str | None = None,
        cost: int | None = None,
        paths: tuple[Path, ...] = (),
        error: str | None = None,
        earlier: bool = False,
    ) -> None:
        """Record where an item ended and emit the event that says so."""
        prompt = _excerpt(prompt)
        self._items[position] = BatchItem(
            position=position,
            key=key,
            prompt=prompt,
            status=status,
            task_id=task_id,
            cost=cost,
            paths=paths,
            error=error,
            earlier=earlier,
        )
        self._emit(
            BatchEvent(
                kind=BatchEventKind(status.value),
                position=position,
                key=key,
                prompt=prompt,
                task_id=task_id,
                cost=cost,
                paths=paths,
                message=error,
                earlier=earlier,
            )
        )

    def _record(self, key: str, position: int, request: GenerationRequest, state: str) -> _Record:
        return _Record(
            key=key,
            position=position,
            state=state,
            prompt=_excerpt(request.prompt),
            model=request.model,
            time=time.time(),
        )

    # --- reading the input -----------------------------------------------------------------------

    async def _produce(self, group: TaskGroup, journal: _Journal) -> None:
        position = -1
        async for item in iterate(self._requests):
            if self._stopping:
                return
            position += 1
            if isinstance(item, InvalidRequestError):
                self._invalid(position, "", item)
                continue
            try:
                request = (
                    item if isinstance(item, GenerationRequest) else GenerationRequest(prompt=item)
                )
            except InvalidRequestError as exc:
                self._invalid(position, item if isinstance(item, str) else "", exc)
                continue
            key = request_key(position, request)
            record = journal.index.get(key)
            plan = self._plan(position, key, request, record)
            if plan is None:
                continue
            attach = plan == "attach" and record is not None
            # Until its job starts, an item counts as not started (or, attached, as running).
            self._items[position] = BatchItem(
                position=position,
                key=key,
                prompt=_excerpt(request.prompt),
                status=BatchItemStatus.RUNNING if attach else BatchItemStatus.PENDING,
                task_id=record.task_id if attach and record is not None else None,
                cost=record.cost if attach and record is not None else None,
            )
            await self._window.acquire()
            group.start_soon(self._job, position, key, request, record, plan, journal)

    def _invalid(self, position: int, prompt: str, error: InvalidRequestError) -> None:
        key = hashlib.sha256(f"invalid\0{position}\0{error}".encode()).hexdigest()
        self._finish(
            position,
            key,
            prompt,
            BatchItemStatus.FAILED,
            error=str(error),
        )

    def _plan(
        self, position: int, key: str, request: GenerationRequest, record: _Record | None
    ) -> str | None:
        """Return "submit" or "attach", or finish the item from its journal record (None)."""
        state = record.state if record is not None else "unsent"
        prompt = request.prompt
        if record is not None and state == "succeeded":
            paths = tuple(self._out_dir / name for name in record.files)
            if record.task_id is not None and not all(path.is_file() for path in paths):
                return "attach"  # the images went missing: fetch them again, never re-create
            self._finish(
                position,
                key,
                prompt,
                BatchItemStatus.SUCCEEDED,
                task_id=record.task_id,
                cost=record.cost,
                paths=paths,
                earlier=True,
            )
            return None
        if record is not None and state == "running" and record.task_id is not None:
            return "attach"
        if record is not None and state == "failed" and not self._retry_failed:
            self._finish(
                position,
                key,
                prompt,
                BatchItemStatus.FAILED,
                task_id=record.task_id,
                error=f"failed in an earlier run: {record.error}",
                earlier=True,
            )
            return None
        if (
            record is not None
            and state in ("submitting", "uncertain")
            and not self._retry_uncertain
        ):
            detail = record.error or "the run stopped while its create was on its way"
            self._finish(
                position,
                key,
                prompt,
                BatchItemStatus.UNCERTAIN,
                cost=record.cost if record.cost is not None else _estimate(record.model),
                error=f"may have been charged in an earlier run ({detail}); not re-sent",
                earlier=True,
            )
            return None
        if self._no_more_creates is not None:
            self._skip(position, key, prompt)
            return None
        return "submit"

    def _skip(self, position: int, key: str, prompt: str) -> None:
        self._finish(
            position,
            key,
            prompt,
            BatchItemStatus.SKIPPED,
            error=self._no_more_creates,
        )

    # --- one item --------------------------------------------------------------------------------

    async def _job(
        self,
        position: int,
        key: str,
        request: GenerationRequest,
        record: _Record | None,
        plan: str,
        journal: _Journal,
    ) -> None:
        slot = _Slot(self._slots)
        try:
            with self._stoppable():
                await slot.acquire()
            if self._stopping:
                return  # the item stays pending (or running, when attached)
            if plan == "attach" and record is not None and record.task_id is not None:
                task = self._client.task(record.task_id)
                cost = record.cost
                self._emit(
                    BatchEvent(
                        kind=BatchEventKind.RESUMED,
                        position=position,
                        key=key,
                        prompt=_excerpt(request.prompt),
                        task_id=task.id,
                        cost=cost,
                        earlier=True,
                    )
                )
            else:
                submitted = await self._submit(position, key, request, journal)
                if submitted is None:
                    return
                task, cost = submitted
            await self._follow(position, key, request, task, cost, journal, slot)
        finally:
            slot.release()
            self._window.release()

    async def _submit(
        self, position: int, key: str, request: GenerationRequest, journal: _Journal
    ) -> tuple[Task, int | None] | None:
        """Journal the intent, submit, journal the task id; None when the item ended here."""
        prompt = request.prompt
        if self._no_more_creates is not None:
            self._skip(position, key, prompt)
            return None

        async def intent(_: GenerationRequest) -> bool:
            # A stopping batch sends nothing more: the create is abandoned unsent.
            if self._stopping:
                return False
            # Written once the create is about to leave (after the limiter's waits): from here a
            # crash may have cost a credit, so a rerun reports the item instead of resending it.
            with anyio.CancelScope(shield=True):
                await journal.write(self._record(key, position, request, "submitting"))
            return True

        async def created(task: Task) -> None:
            # Runs inside the create attempt, which cancelling this batch does not reach: the task
            # id goes on disk before anything else happens, even if the batch is being stopped.
            await journal.write(
                attrs.evolve(
                    self._record(key, position, request, "running"),
                    task_id=task.id,
                    cost=task.credits_cost,
                )
            )

        try:
            task = None
            with self._stoppable():
                # stop() abandons a create still waiting for a slot or a pause: nothing is sent.
                task = await self._client.submit(
                    request, hooks=SubmitHooks(before_send=intent, on_created=created)
                )
            if task is None:
                return None  # stopped; a create already on its way journals its task id
        except SubmitAbandonedError:
            return None  # stopped before it was sent: the item stays pending
        except SubmitUncertainError as exc:
            cost = _estimate(request.model)
            await journal.write(
                attrs.evolve(
                    self._record(key, position, request, "uncertain"), cost=cost, error=str(exc)
                )
            )
            self._finish(
                position,
                key,
                prompt,
                BatchItemStatus.UNCERTAIN,
                cost=cost,
                error=str(exc),
            )
            return None
        except ClientStateError:
            raise  # the client closed under us: whether the create left is unknown
        except NanoBananaError as exc:
            # Refused or never sent: nothing was charged, a rerun sends it again.
            await journal.write(
                attrs.evolve(self._record(key, position, request, "unsent"), error=str(exc))
            )
            if isinstance(exc, _STOP_ERRORS):
                if self._no_more_creates is None:
                    self._no_more_creates = f"not sent: {exc}"
                self._skip(position, key, prompt)
            else:
                self._finish(
                    position,
                    key,
                    prompt,
                    BatchItemStatus.FAILED,
                    error=str(exc),
                )
            return None
        charged = task.credits_cost
        self._items[position] = attrs.evolve(
            self._items[position], status=BatchItemStatus.RUNNING, task_id=task.id, cost=charged
        )
        self._emit(
            BatchEvent(
                kind=BatchEventKind.SUBMITTED,
                position=position,
                key=key,
                prompt=_excerpt(prompt),
                task_id=task.id,
                cost=charged,
            )
        )
        return task, charged

    async def _follow(
        self,
        position: int,
        key: str,
        request: GenerationRequest,
        task: Task,
        cost: int | None,
        journal: _Journal,
        slot: _Slot,
    ) -> None:
        """Wait for the task, then save its images and journal them (all stoppable)."""
        prompt = request.prompt
        self._positions[task.id] = position
        try:
            with self._stoppable():
                try:
                    result = await follow(
                        task, self._emit, position=position, key=key, prompt=prompt
                    )
                except TaskFailedError as exc:
                    slot.release()
                    await journal.write(
                        attrs.evolve(
                            self._record(key, position, request, "failed"),
                            task_id=task.id,
                            cost=cost,
                            error=str(exc),
                        )
                    )
                    self._finish(
                        position,
                        key,
                        prompt,
                        BatchItemStatus.FAILED,
                        task_id=task.id,
                        cost=cost,
                        error=str(exc),
                    )
                    return
                except NanoBananaError as exc:
                    # Lost track (deadline, poll errors): the task may still run. The journal
                    # keeps it running, so a rerun attaches to it again.
                    self._lost(position, key, prompt, task.id, cost, exc)
                    return
                slot.release()
                if result.credits_cost is not None:
                    cost = result.credits_cost
                try:
                    paths = await self._save(position, prompt, result)
                except (NanoBananaError, OSError) as exc:
                    self._lost(position, key, prompt, task.id, cost, exc, what="download")
                    return
                await journal.write(
                    attrs.evolve(
                        self._record(key, position, request, "succeeded"),
                        task_id=task.id,
                        cost=cost,
                        files=tuple(path.name for path in paths),
                    )
                )
                self._finish(
                    position,
                    key,
                    prompt,
                    BatchItemStatus.SUCCEEDED,
                    task_id=task.id,
                    cost=cost,
                    paths=paths,
                )
        finally:
            self._positions.pop(task.id, None)

    def _lost(
        self,
        position: int,
        key: str,
        prompt: str,
        task_id: str,
        cost: int | None,
        exc: BaseException,
        what: str = "wait",
    ) -> None:
        self._finish(
            position,
            key,
            prompt,
            BatchItemStatus.FAILED,
            task_id=task_id,
            cost=cost,
            error=f"{what} of task {task_id} failed: {exc} (a rerun attaches to it again)",
        )

    async def _save(self, position: int, prompt: str, result: TaskResult) -> tuple[Path, ...]:
        if not result.images:
            raise ProtocolError(f"task {result.task_id} succeeded without any image")
        async with self._downloads:
            return tuple(
                [
                    await image.save(self._out_dir / image_stem(position, prompt, n))
                    for n, image in enumerate(result.images)
                ]
            )


async def run_batch(
    client: Client,
    requests: BatchRequests,
    out_dir: str | os.PathLike[str],
    *,
    journal: str | os.PathLike[str] | None = None,
    concurrency: int | None = None,
    max_downloads: int = DEFAULT_MAX_DOWNLOADS,
    retry_uncertain: bool = False,
    retry_failed: bool = False,
    on_event: Callable[[BatchEvent], None] | None = None,
) -> BatchSummary:
    """Run a `Batch` to the end and return its summary (see `Batch` for the arguments)."""
    batch = Batch(
        client,
        requests,
        out_dir,
        journal=journal,
        concurrency=concurrency,
        max_downloads=max_downloads,
        retry_uncertain=retry_uncertain,
        retry_failed=retry_failed,
    )
    return await batch.run(on_event=on_event)
