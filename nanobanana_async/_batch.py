"""Batch runs: fan-out jobs that save their images and survive crashes through a journal.

The runner reads its input lazily, submits through `Client.submit` with hooks that journal each
step (see `_journal`), follows every task, saves its images and reports events (see `_events`).
Running again with the same journal skips finished items, attaches running tasks by id (never
resubmitting them) and reports uncertain ones, which are sent again only on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import time
import unicodedata
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from pathlib import Path
from typing import Union, overload

import anyio
import attrs
from anyio.abc import TaskGroup

if sys.version_info < (3, 11):  # pragma: no cover - anyio depends on the backport there
    from exceptiongroup import BaseExceptionGroup

from ._client import Client
from ._config import RetryEvent
from ._errors import (
    AuthenticationError,
    BudgetExceededError,
    ClientClosedError,
    ClientStateError,
    InsufficientCreditsError,
    InvalidRequestError,
    LimiterUnavailableError,
    NanoBananaError,
    PermissionDeniedError,
    ProtocolError,
    SubmitAbandonedError,
    SubmitHookError,
    SubmitUncertainError,
    TaskFailedError,
)
from ._events import (
    BatchEvent,
    BatchEventKind,
    BatchItem,
    BatchItemStatus,
    BatchSummary,
    follow,
    prompt_excerpt,
    retry_event,
)
from ._fanout import iterate
from ._gallery import Gallery
from ._journal import (
    JOURNAL_NAME,
    ItemKeys,
    Journal,
    JournalRecord,
    decide,
    estimate_cost,
    lookup,
)
from ._models import GenerationRequest, TaskResult
from ._submitter import SubmitHooks
from ._task import Task

logger = logging.getLogger("nanobanana_async")

#: One item of a batch: a request, a bare prompt, or an input that could not be read (reported
#: as failed at its position; the CLI passes unreadable lines this way).
BatchInput = Union[GenerationRequest, str, InvalidRequestError]
#: What a batch accepts: a plain or an async iterable, read lazily.
BatchRequests = Union[Iterable[BatchInput], AsyncIterable[BatchInput]]

#: Seconds between two rewrites of the gallery page while a batch runs.
GALLERY_INTERVAL = 1.0
#: Events that do not change the gallery.
_QUIET_EVENTS = frozenset(
    {BatchEventKind.PROGRESS, BatchEventKind.RETRYING, BatchEventKind.RATE_LIMITED}
)

#: Generations in flight when neither the batch nor the client's limiter says.
DEFAULT_BATCH_CONCURRENCY = 8
#: Downloads at once.
DEFAULT_MAX_DOWNLOADS = 4
#: Characters of the prompt kept in file names.
SLUG_LENGTH = 40
#: Refusals that every further create would meet too: stop submitting, skip the rest.
_STOP_ERRORS: tuple[type[NanoBananaError], ...] = (
    BudgetExceededError,
    AuthenticationError,
    PermissionDeniedError,
    InsufficientCreditsError,
    LimiterUnavailableError,
)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the first error of a task group's group, preferring ours to cancellations."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for wanted in (NanoBananaError, Exception):
        for leaf in leaves:
            if isinstance(leaf, wanted):
                return leaf
    return leaves[0]


# --- file names -------------------------------------------------------------------------------


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


#: Temporary files a batch of ours leaves when killed mid-write: a download's ``.part`` file
#: (``.<position>-<slug>-<n>.<ext>.<8 hex>.part``) and a gallery page's ``.tmp`` file.
_LEFTOVER = re.compile(
    r"\.\d{5,}-[a-z0-9-]+-\d+(?:\.[a-z0-9]{1,5})?\.[0-9a-f]{8}\.part"
    r"|\.(?:index|page-\d{4,})\.html\.\d+\.[0-9a-f]{12}\.tmp"
)


def remove_leftovers(out_dir: Path) -> list[str]:
    """Remove the temporary files an earlier, killed run left in *out_dir*; return their names.

    Only files named the way this runner names its own (image downloads and gallery pages)
    are touched, never a file of the user's.
    """
    removed: list[str] = []
    try:
        entries = os.scandir(out_dir)
    except OSError:
        return removed
    with entries:
        for entry in entries:
            if _LEFTOVER.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    if removed:
        logger.info("removed %d temporary files left by an earlier run", len(removed))
    return removed


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


class _Outcomes(Sequence[BatchItem]):
    """The items of a batch in input order, each packed into one string until it is read.

    A `BatchItem` with its paths costs about 850 bytes; packed, an item costs about a third of
    that, so a batch of 100,000 prompts keeps its memory flat. Items are built again when read.
    """

    __slots__ = ("_live", "_out_dir", "_rows")

    def __init__(self, out_dir: Path) -> None:
        self._out_dir = out_dir
        self._rows: list[str | None] = []
        # Items not finished yet (at most the batch's window), kept whole.
        self._live: dict[int, BatchItem] = {}

    def set(self, item: BatchItem, *, finished: bool) -> None:
        """Store *item* at its position (read in order: at most one past the last)."""
        position = item.position
        if position == len(self._rows):
            self._rows.append(None)
        if finished:
            self._live.pop(position, None)
            self._rows[position] = self._pack(item)
        else:
            self._live[position] = item

    def _pack(self, item: BatchItem) -> str:
        names = [path.name if path.parent == self._out_dir else str(path) for path in item.paths]
        row = [
            item.key,
            item.prompt,
            item.status.value,
            item.task_id,
            item.cost,
            names,
            item.error,
            item.earlier,
        ]
        return json.dumps(row, ensure_ascii=False, separators=(",", ":"))

    def _unpack(self, position: int, row: str) -> BatchItem:
        key, prompt, status, task_id, cost, names, error, earlier = json.loads(row)
        return BatchItem(
            position=position,
            key=key,
            prompt=prompt,
            status=BatchItemStatus(status),
            task_id=task_id,
            cost=cost,
            paths=tuple(self._out_dir / name for name in names),
            error=error,
            earlier=earlier,
        )

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> BatchItem: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[BatchItem]: ...

    def __getitem__(self, index: int | slice) -> BatchItem | Sequence[BatchItem]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self._rows))))
        position = range(len(self._rows))[index]  # IndexError, negative indexes
        row = self._rows[position]
        if row is None:
            return self._live[position]
        return self._unpack(position, row)

    def __iter__(self) -> Iterator[BatchItem]:
        for position in range(len(self._rows)):
            yield self[position]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"({', '.join(repr(item) for item in self)})"


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
        client: The client to submit with. The journal marks a create as leaving right before its
            body leaves (after the limiter's waits), through `SubmitHooks`.
        requests: `GenerationRequest`s or prompts (read lazily; an `InvalidRequestError` in their
            place is reported as failed at its position).
        out_dir: The folder for the images (made if missing).
        journal: The journal's path; default ``out_dir/journal.jsonl``.
        concurrency: Generations in flight at once; default the client's `max_concurrency`.
        max_downloads: Downloads at once.
        retry_uncertain: Send again the creates that may have been charged in an earlier run.
        retry_failed: Send again the items whose task failed in an earlier run.
        gallery: Keep ``out_dir/index.html`` (see `write_gallery`) up to date as items finish.
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
        gallery: bool = True,
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
        self._gallery = gallery
        self._gallery_dirty = anyio.Event()
        self._gallery_error: str | None = None
        self._on_event: Callable[[BatchEvent], None] | None = None
        self._started = False
        self._stopping = False
        self._no_more_creates: str | None = None
        self._scopes: set[anyio.CancelScope] = set()
        self._items = _Outcomes(self._out_dir)
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

    async def events(self) -> AsyncGenerator[BatchEvent, None]:
        """Run the batch, yielding its events; `summary` is set when the iteration ends.

        Leaving the loop early cancels the batch (the journal stays consistent).
        """
        queue: asyncio.Queue[BatchEvent | None] = asyncio.Queue()

        async def run() -> BatchSummary:
            try:
                return await self.run(on_event=queue.put_nowait)
            finally:
                queue.put_nowait(None)

        # Owned by this generator (no task group can span its yields): cancelled and awaited
        # in its `finally`.
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
        journal = await anyio.to_thread.run_sync(Journal.open, self._journal_path)
        # Holding the journal's lock: no other batch of this journal writes here now.
        await anyio.to_thread.run_sync(remove_leftovers, self._out_dir)
        remove_listener = self._client.add_retry_listener(self._on_retry)
        gallery = Gallery(self._out_dir, self._journal_path) if self._gallery else None
        try:
            async with anyio.create_task_group() as views:
                if gallery is not None:
                    await self._write_gallery(gallery, running=True)
                    views.start_soon(self._keep_gallery, gallery)
                try:
                    async with anyio.create_task_group() as group:
                        with self._stoppable():
                            await self._produce(group, journal)
                finally:
                    views.cancel_scope.cancel()
        except BaseExceptionGroup as group_error:
            # One error, as the caller expects (e.g. ClientClosedError), not a group of them.
            raise first_error(group_error) from None
        finally:
            remove_listener()
            journal.close()
        if gallery is not None:
            await self._write_gallery(gallery, running=False)
        items = self._items
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
        if event.kind not in _QUIET_EVENTS:
            self._gallery_dirty.set()
        if self._on_event is not None:
            self._on_event(event)

    async def _keep_gallery(self, gallery: Gallery) -> None:
        """Rewrite the gallery after items change, at most once per `GALLERY_INTERVAL`."""
        while True:
            await self._gallery_dirty.wait()
            self._gallery_dirty = anyio.Event()
            await self._write_gallery(gallery, running=True)
            await anyio.sleep(GALLERY_INTERVAL)

    async def _write_gallery(self, gallery: Gallery, *, running: bool) -> None:
        # A view of the journal: it must never break the batch, nor flood its output.
        try:
            # Shielded for the final write: the last page must show how the batch ended.
            with anyio.CancelScope(shield=not running):
                await anyio.to_thread.run_sync(functools.partial(gallery.write, running=running))
        except (OSError, NanoBananaError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            message = (
                f"the gallery {gallery.path} was not updated: {reason}; the batch goes on "
                f"(the gallery is a view of the journal: `nanobanana gallery {self._out_dir}` "
                "rebuilds it)"
            )
            if message != self._gallery_error:
                # One line, once per distinct cause: not a traceback every second.
                logger.warning("%s", message)
            self._gallery_error = message
        else:
            self._gallery_error = None

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
        prompt = prompt_excerpt(prompt)
        self._items.set(
            BatchItem(
                position=position,
                key=key,
                prompt=prompt,
                status=status,
                task_id=task_id,
                cost=cost,
                paths=paths,
                error=error,
                earlier=earlier,
            ),
            finished=True,
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

    def _record(
        self, key: str, position: int, request: GenerationRequest, state: str
    ) -> JournalRecord:
        return JournalRecord(
            key=key,
            position=position,
            state=state,
            prompt=prompt_excerpt(request.prompt),
            model=request.model,
            aspect_ratio=request.aspect_ratio,
            image_size=request.image_size,
            time=time.time(),
        )

    # --- reading the input -----------------------------------------------------------------------

    async def _produce(self, group: TaskGroup, journal: Journal) -> None:
        position = -1
        keys = ItemKeys()
        async for item in iterate(self._requests):
            if self._stopping:
                return
            position += 1
            if isinstance(item, InvalidRequestError):
                await self._invalid(journal, position, "", item)
                continue
            try:
                request = (
                    item if isinstance(item, GenerationRequest) else GenerationRequest(prompt=item)
                )
            except InvalidRequestError as exc:
                await self._invalid(journal, position, item if isinstance(item, str) else "", exc)
                continue
            key = keys.next(request)
            record = lookup(journal.index, key, position, request)
            # Read once: an earlier run's record is not needed again after this (flat memory).
            journal.index.pop(key, None)
            plan = self._plan(position, key, request, record)
            if plan is None:
                continue
            attach = plan == "attach" and record is not None
            # Until its job starts, an item counts as not started (or, attached, as running).
            self._items.set(
                BatchItem(
                    position=position,
                    key=key,
                    prompt=prompt_excerpt(request.prompt),
                    status=BatchItemStatus.RUNNING if attach else BatchItemStatus.PENDING,
                    task_id=record.task_id if attach and record is not None else None,
                    cost=record.cost if attach and record is not None else None,
                ),
                finished=False,
            )
            await self._window.acquire()
            group.start_soon(self._job, position, key, request, record, plan, journal)

    async def _invalid(
        self, journal: Journal, position: int, prompt: str, error: InvalidRequestError
    ) -> None:
        key = hashlib.sha256(f"invalid\0{position}\0{error}".encode()).hexdigest()
        # Journaled (nothing is sent) so that the gallery accounts for every input line.
        await journal.write(
            JournalRecord(
                key=key,
                position=position,
                state="invalid",
                prompt=prompt_excerpt(prompt),
                error=str(error),
                time=time.time(),
            )
        )
        self._finish(
            position,
            key,
            prompt,
            BatchItemStatus.FAILED,
            error=str(error),
        )

    def _plan(
        self, position: int, key: str, request: GenerationRequest, record: JournalRecord | None
    ) -> str | None:
        """Return "submit" or "attach", or finish the item from its journal record (None)."""
        decision = decide(
            record,
            out_dir=self._out_dir,
            retry_failed=self._retry_failed,
            retry_uncertain=self._retry_uncertain,
        )
        prompt = request.prompt
        if decision == "attach":
            return "attach"
        if record is not None and decision == "done":
            self._finish(
                position,
                key,
                prompt,
                BatchItemStatus.SUCCEEDED,
                task_id=record.task_id,
                cost=record.cost,
                paths=tuple(self._out_dir / name for name in record.files),
                earlier=True,
            )
            return None
        if record is not None and decision == "failed":
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
        if record is not None and decision == "uncertain":
            detail = record.error or "the run stopped while its create was on its way"
            self._finish(
                position,
                key,
                prompt,
                BatchItemStatus.UNCERTAIN,
                cost=record.cost if record.cost is not None else estimate_cost(record.model),
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
        record: JournalRecord | None,
        plan: str,
        journal: Journal,
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
                        prompt=prompt_excerpt(request.prompt),
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
        self, position: int, key: str, request: GenerationRequest, journal: Journal
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
            # Shielded: the intent must be on disk before the create may leave.
            with anyio.CancelScope(shield=True):
                await journal.write(self._record(key, position, request, "submitting"))
            return True

        async def created(task: Task) -> None:
            # Runs inside the create attempt, which cancelling this batch does not reach: the task
            # id goes on disk before anything else happens, even if the batch is being stopped.
            # Known at once, so that the retry events of its first polls name this item.
            self._positions[task.id] = position
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
            cost = estimate_cost(request.model)
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
        except SubmitHookError as exc:
            # Paid for and tracked: only its journal line failed (a full disk). Go on with the
            # task, and say how to recover it should this run die before it ends.
            logger.error(
                "%s; to get its image later: nanobanana wait %s --out PATH", exc, exc.task_id
            )
            task = exc.task
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
        self._items.set(
            attrs.evolve(
                self._items[position], status=BatchItemStatus.RUNNING, task_id=task.id, cost=charged
            ),
            finished=False,
        )
        self._emit(
            BatchEvent(
                kind=BatchEventKind.SUBMITTED,
                position=position,
                key=key,
                prompt=prompt_excerpt(prompt),
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
        journal: Journal,
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
    gallery: bool = True,
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
        gallery=gallery,
    )
    return await batch.run(on_event=on_event)
