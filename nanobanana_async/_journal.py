"""The batch journal: a JSONL file that lets a batch survive crashes without paying twice.

One record per line, each written whole and fsynced before the batch goes on. A record names the
item by its key and holds its state:

- ``submitting``: a create is about to leave; if nothing follows, it may have been charged.
- ``running``: the create answered; the task id is known.
- ``succeeded``: the images are saved (file names relative to the output folder).
- ``failed``: the service said the task failed (and refunded it).
- ``uncertain``: the create may have been charged but its answer was lost.
- ``unsent``: nothing was charged (refused, budget, network): a rerun sends it.
- ``invalid``: the input line is not a valid request (nothing sent); shown by the gallery only.

An item's key comes from its content (prompt, model, ratio, size, references) and its occurrence
among identical requests, never from its line number: inserting, removing or reordering lines of
the input never makes a rerun pay again. Records are read and written with this module's own
serialiser (plain JSON of known fields), never the wire converter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
import attrs

from ._errors import InvalidRequestError
from ._inputs import MODEL_COSTS, ImageInput
from ._models import GenerationRequest

#: The journal's file name in the output folder, unless another path is given.
JOURNAL_NAME = "journal.jsonl"
#: The states a record can hold.
STATES = frozenset(
    {"submitting", "running", "succeeded", "failed", "uncertain", "unsent", "invalid"}
)
#: Longest journal line read, in bytes; a longer one is skipped unread (a record takes a few
#: hundred bytes, a long prompt a few kB).
MAX_LINE_BYTES = 1 << 20

logger = logging.getLogger("nanobanana_async")


@attrs.frozen(kw_only=True)
class JournalRecord:
    """One journal line. Never holds a secret."""

    key: str
    position: int
    state: str
    prompt: str = ""
    model: str | None = None
    aspect_ratio: str | None = None
    image_size: str | None = None
    task_id: str | None = None
    cost: int | None = None
    files: tuple[str, ...] = ()
    error: str | None = None
    time: float = 0.0

    def to_line(self) -> bytes:
        """Return the record as one JSON line; empty fields are left out."""
        data = {
            field.name: value
            for field in attrs.fields(JournalRecord)
            if (value := getattr(self, field.name)) is not None and value != ()
        }
        data["files"] = list(self.files) if self.files else None
        data = {k: v for k, v in data.items() if v is not None}
        return (json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_line(cls, line: bytes) -> JournalRecord | None:
        """Read one line back; None for a line that is torn, not JSON, or not a record.

        Never raises: binary garbage, deep nesting, lines over `MAX_LINE_BYTES` and text that
        cannot be written back (lone surrogates) are all None.
        """
        if len(line) > MAX_LINE_BYTES:
            return None
        try:
            data = json.loads(line)
        except (ValueError, RecursionError, MemoryError):  # also UnicodeDecodeError
            return None
        if not isinstance(data, dict):
            return None
        return _record_of(data)


_TEXT_FIELDS = ("prompt", "model", "aspect_ratio", "image_size", "task_id", "error")


def _record_of(data: Mapping[str, Any]) -> JournalRecord | None:
    key, position, state = data.get("key"), data.get("position"), data.get("state")
    if not isinstance(key, str) or state not in STATES:
        return None
    if isinstance(position, bool) or not isinstance(position, int):
        return None
    fields: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = data.get(name)
        if value is not None and not (isinstance(value, str) and _writable(value)):
            return None
        if value is not None:
            fields[name] = value
    cost = data.get("cost")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int)):
        return None
    files = data.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and _writable(f) for f in files):
        return None
    if not _writable(key):
        return None
    moment = data.get("time", 0.0)
    if (
        isinstance(moment, bool)
        or not isinstance(moment, (int, float))
        or not math.isfinite(moment)
    ):
        return None
    return JournalRecord(
        key=key,
        position=position,
        state=state,
        cost=cost,
        files=tuple(files),
        time=float(moment),
        **fields,
    )


def _writable(text: str) -> bool:
    """Whether *text* encodes as UTF-8 (JSON lets a lone surrogate in; no file or page can)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- keys ----------------------------------------------------------------------------------------


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


def _canonical(request: GenerationRequest) -> dict[str, Any]:
    return {
        "prompt": request.prompt,
        "model": request.model,
        "aspect_ratio": request.aspect_ratio,
        "image_size": request.image_size,
        "images": [_reference_text(image) for image in request.images],
    }


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def request_key(request: GenerationRequest, occurrence: int = 0) -> str:
    """Return an item's journal key: its content, and which of the identical requests it is."""
    return _digest({**_canonical(request), "occurrence": occurrence})


def legacy_key(position: int, request: GenerationRequest) -> str:
    """Return the key journals of version 0.1 used (content and line position)."""
    return _digest({**_canonical(request), "position": position})


class ItemKeys:
    """Hands out the keys of a batch's items in input order (counting identical requests)."""

    def __init__(self) -> None:
        # By 64 bits of the key (a number, not its 64 characters): flat memory at 100k items.
        self._seen: dict[int, int] = {}

    def next(self, request: GenerationRequest) -> str:
        """Return the key of the next item, *request*."""
        content = request_key(request)
        short = int(content[:16], 16)
        occurrence = self._seen.get(short, 0)
        self._seen[short] = occurrence + 1
        return content if occurrence == 0 else request_key(request, occurrence)


#: What a run does with an item, given its journal record: see `decide`.
Decision = Literal["send", "attach", "done", "failed", "uncertain"]


def decide(
    record: JournalRecord | None,
    *,
    out_dir: Path,
    retry_failed: bool = False,
    retry_uncertain: bool = False,
) -> Decision:
    """Return what a run does with an item whose last journal record is *record*.

    `done`: its images are on disk. `attach`: its task runs, or its images went missing (fetched
    again, never re-created). `failed`/`uncertain`: reported from the earlier run, not re-sent
    unless asked. `send`: a create is sent.
    """
    if record is None:
        return "send"
    state = record.state
    if state == "succeeded":
        if record.task_id is not None and not all(
            (out_dir / name).is_file() for name in record.files
        ):
            return "attach"
        return "done"
    if state == "running" and record.task_id is not None:
        return "attach"
    if state == "failed" and not retry_failed:
        return "failed"
    if state in ("submitting", "uncertain") and not retry_uncertain:
        return "uncertain"
    return "send"


def lookup(
    index: Mapping[str, JournalRecord], key: str, position: int, request: GenerationRequest
) -> JournalRecord | None:
    """Return the item's record: by its key, else by the key a 0.1 journal gave it (its line)."""
    record = index.get(key)
    return record if record is not None else index.get(legacy_key(position, request))


def estimate_cost(model: str | None) -> int:
    """What a create of *model* may have cost (the dearest known cost for unknown models)."""
    if model is not None and model in MODEL_COSTS:
        return MODEL_COSTS[model]
    return max(MODEL_COSTS.values())


# --- reading and writing -------------------------------------------------------------------------


@attrs.frozen
class JournalScan:
    """What reading a journal found: the last record of each key, and the lines skipped."""

    records: dict[str, JournalRecord]
    skipped: int = 0


def journal_lines(stream: BinaryIO) -> Iterator[tuple[bytes | None, int]]:
    """Yield each line of a binary journal *stream* with its size in bytes.

    The line is None if it is over `MAX_LINE_BYTES`: such a line is read in bounded pieces and
    dropped, it never sits whole in memory. The last line may lack its newline (torn, or still
    being written).
    """
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line, len(line)
            continue
        size = len(line)
        while line and not line.endswith(b"\n"):
            line = stream.readline(MAX_LINE_BYTES)
            size += len(line)
        yield None, size


def unreadable(line: bytes | None) -> bool:
    """Whether a line of `journal_lines` counts as skipped when it holds no record (not blank)."""
    return line is None or bool(line.strip())


def scan_journal(path: str | os.PathLike[str]) -> JournalScan:
    """Read the journal at *path* (empty if it is missing); never fails on its content.

    Lines that hold no record (torn by a crash, not JSON, binary garbage, nested too deep, over
    `MAX_LINE_BYTES`) are skipped and counted; a warning on the ``nanobanana_async`` logger says
    how many. A blank line is not counted.
    """
    index: dict[str, JournalRecord] = {}
    skipped = 0
    with contextlib.suppress(FileNotFoundError), Path(path).open("rb") as stream:
        for line, _size in journal_lines(stream):
            record = JournalRecord.from_line(line) if line is not None else None
            if record is not None:
                index[record.key] = record
            elif unreadable(line):
                skipped += 1
    if skipped:
        logger.warning(
            "journal %s: skipped %d unreadable line%s (not a record)",
            path,
            skipped,
            "" if skipped == 1 else "s",
        )
    return JournalScan(index, skipped)


def read_journal(path: str | os.PathLike[str]) -> dict[str, JournalRecord]:
    """Return the last record of each key in the journal at *path* (empty if it is missing).

    Unreadable lines are skipped and counted (see `scan_journal`).
    """
    return scan_journal(path).records


def journal_credits(path: str | os.PathLike[str]) -> int:
    """Return the credits the journal at *path* records as spent (refunds excluded).

    Creates whose answer was lost count at their model's price: they may have been charged.
    """
    return credits_spent(read_journal(path).values())


def credits_spent(records: Iterable[JournalRecord]) -> int:
    """Return the credits *records* (one per key, as `read_journal` gives) record as spent."""
    total = 0
    for record in records:
        if record.state in ("running", "succeeded"):
            total += record.cost or 0
        elif record.state in ("submitting", "uncertain"):
            total += record.cost if record.cost is not None else estimate_cost(record.model)
    return total


class Journal:
    """The append-only journal: every record is written whole and fsynced, one at a time."""

    def __init__(self, path: Path, fd: int, index: dict[str, JournalRecord]) -> None:
        self.path = path
        self.index = index
        self._fd: int | None = fd
        self._lock = anyio.Lock()
        self._fd_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open the journal for appending, locked, and read it (dropping a torn last line)."""
        if path.is_dir():
            raise InvalidRequestError("journal", f"{path} is a directory; give a file path")
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags, 0o644)
        try:
            _lock(fd, path)
            good = read = 0
            with path.open("rb") as stream:
                # In bounded pieces: a line of gigabytes is measured, never held whole.
                while piece := stream.readline(MAX_LINE_BYTES):
                    read += len(piece)
                    if piece.endswith(b"\n"):
                        good = read
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
        # Held while the fd is in use: a close() meanwhile would close it under this write, and
        # the write's own close would then close a number the process may have reused.
        with self._fd_lock:
            # A create that answers after the batch stopped still records its task id: reopen.
            opened = self._fd is None
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND) if opened else self._fd
            assert fd is not None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                if opened:
                    os.close(fd)

    async def write(self, record: JournalRecord) -> None:
        """Append *record* and fsync it; a cancellation waits until it is on disk."""
        line = record.to_line()
        # Shielded: a record half-written by a cancel would tear the journal line.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await anyio.to_thread.run_sync(self._write, line)
        # Not added to `index` (the records read at open): a batch reads each item's record
        # once, and keeping every record written would cost memory per item.

    def close(self) -> None:
        """Close the file (a late record reopens it)."""
        with self._fd_lock:
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
