"""The ``nanobanana`` command: generate, batch, status, wait, emulator and demo.

Exit codes: 0 all done; 1 something failed (a task, or batch items that did not end with images);
2 usage error (bad option, unreadable input file, no API key); 130 interrupted (Ctrl-C).

Output: a live display (with the ``cli`` extra, ``rich``) on a terminal; plain lines otherwise;
``--json`` prints one JSON object per line: each event as it happens (``{"event": "submitted",
...}``), then one final object (``"summary"`` for batch and demo, ``"result"`` for generate and
wait, ``"status"`` for status).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TextIO

import attrs

from ._batch import Batch, slugify
from ._client import API_KEY_ENV, BASE_URL_ENV, DEFAULT_MAX_CONCURRENCY, Client
from ._config import PollPolicy, RetryEvent
from ._errors import InvalidRequestError, NanoBananaError, TaskFailedError
from ._events import (
    BatchEvent,
    BatchEventKind,
    BatchItemStatus,
    BatchSummary,
    follow,
    retry_event,
)
from ._journal import JOURNAL_NAME, journal_credits
from ._models import (
    DEFAULT_ASPECT_RATIO,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    GenerationRequest,
    TaskResult,
    TaskStatus,
)
from ._task import Task
from ._version import __version__
from ._wire import unstructure

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Divides every poll delay (for emulators running faster than real time); also `--poll-speed`.
POLL_SPEED_ENV = "NANOBANANA_POLL_SPEED"
#: Fields of a JSONL object or CSV column names.
INPUT_FIELDS = ("prompt", "model", "aspect_ratio", "image_size", "images")
#: Separates several references in one CSV `images` cell.
CSV_IMAGE_SEPARATOR = "|"

DEMO_SPEED = 20.0
DEMO_DOWNSCALE = 4
DEMO_OUT = "nanobanana-demo"
DEMO_REQUESTS = (
    ("a banana cat napping on a sunny windowsill", "nano-banana-fast", "1:1", "1K"),
    ("a lighthouse built from bananas at dusk, 35mm photo", "nano-banana", "16:9", "1K"),
    ("isometric banana city in pastel colours", "nano-banana-pro", "4:3", "1K"),
    ("portrait of a banana astronaut, studio lighting", "nano-banana", "9:16", "1K"),
    ("watercolour of a banana boat on a calm lake", "nano-banana-fast", "3:2", "1K"),
    ("a robot peeling a banana, cinematic", "nano-banana-pro", "1:1", "2K"),
)

_MAX_ROWS = 8  # per-task rows in the live display
_MAX_PROBLEMS = 20  # problems listed under the summary


class UsageError(Exception):
    """Raised when the command line cannot be carried out as given (exit code 2)."""


# --- output ------------------------------------------------------------------------------------


def _write(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def _short(text: str | None, limit: int = 48) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(position: int | None) -> str:
    return f"#{position} " if position is not None else ""


def _event_line(event: BatchEvent) -> str | None:
    """Return the plain line for *event*, or None for events shown only live."""
    kind, where = event.kind, _where(event.position)
    if kind is BatchEventKind.SUBMITTED:
        cost = f" ({event.cost} credits)" if event.cost is not None else ""
        return f"submitted  {where}{event.task_id}{cost}: {_short(event.prompt)}"
    if kind is BatchEventKind.RESUMED:
        if event.position is None:
            return f"waiting    {event.task_id}"
        return f"resumed    {where}{event.task_id} (submitted by an earlier run)"
    if kind is BatchEventKind.SUCCEEDED:
        return f"saved      {where}{', '.join(str(path) for path in event.paths)}"
    if kind is BatchEventKind.FAILED:
        return f"failed     {where}{event.message}"
    if kind is BatchEventKind.UNCERTAIN:
        return f"uncertain  {where}{event.message}"
    if kind is BatchEventKind.SKIPPED:
        return f"skipped    {where}{event.message}"
    if kind is BatchEventKind.RETRYING:
        return f"retrying   {where}in {event.wait or 0:.1f} s after {event.message}"
    if kind is BatchEventKind.RATE_LIMITED:
        return f"rate limited: every request waits {event.wait or 0:.1f} s ({event.message})"
    return None


def _event_json(event: BatchEvent) -> dict[str, Any]:
    data: dict[str, Any] = unstructure(event)
    kind = data.pop("kind")
    return {"event": str(kind), **data}


def _unfinished(summary: BatchSummary, total: int | None) -> int:
    """Items of the input not finished: stopped, or never read because the run stopped."""
    ended = summary.succeeded + summary.failed + summary.uncertain + summary.skipped
    return max(total if total is not None else summary.total, summary.total) - ended


def _summary_json(summary: BatchSummary, exit_code: int, total: int | None) -> dict[str, Any]:
    problems = [
        {
            "position": item.position,
            "status": str(item.status),
            "task_id": item.task_id,
            "error": item.error,
        }
        for item in summary.items
        if item.status is not BatchItemStatus.SUCCEEDED
    ]
    return {
        "event": "summary",
        "total": max(total if total is not None else summary.total, summary.total),
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "uncertain": summary.uncertain,
        "skipped": summary.skipped,
        "unfinished": _unfinished(summary, total),
        "credits_spent": summary.credits_spent,
        "credits_total": summary.credits_total,
        "elapsed": round(summary.elapsed, 3),
        "interrupted": summary.interrupted,
        "out_dir": str(summary.out_dir),
        "journal": str(summary.journal),
        "exit_code": exit_code,
        "problems": problems,
    }


def _summary_rows(
    summary: BatchSummary, total: int | None, *, show_journal: bool
) -> list[tuple[str, str]]:
    earlier = sum(
        1 for item in summary.items if item.earlier and item.status is BatchItemStatus.SUCCEEDED
    )
    done = f"{summary.succeeded}" + (f" ({earlier} in earlier runs)" if earlier else "")
    rows = [
        ("succeeded", done),
        ("failed", str(summary.failed)),
        ("uncertain", str(summary.uncertain)),
        ("skipped", str(summary.skipped)),
    ]
    unfinished = _unfinished(summary, total)
    if unfinished:
        rows.append(("unfinished", f"{unfinished} (run the same command again to resume)"))
    rows.append(("credits", f"{summary.credits_spent} this run, {summary.credits_total} in all"))
    rows.append(("time", f"{summary.elapsed:.1f} s"))
    rows.append(("images", f"{summary.out_dir}{os.sep}"))
    if show_journal:
        rows.append(("journal", str(summary.journal)))
    return rows


def _problem_lines(summary: BatchSummary) -> list[str]:
    problems = [
        item
        for item in summary.items
        if item.status
        in (BatchItemStatus.FAILED, BatchItemStatus.UNCERTAIN, BatchItemStatus.SKIPPED)
    ]
    lines = [f"#{item.position} {item.status}: {item.error}" for item in problems[:_MAX_PROBLEMS]]
    if len(problems) > _MAX_PROBLEMS:
        lines.append(f"... and {len(problems) - _MAX_PROBLEMS} more (see the journal)")
    return lines


def _exit_code(summary: BatchSummary) -> int:
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.ok else EXIT_FAILED


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}:{seconds % 60:02d}"


class _Tally:
    """Counts for the live display: done, failed, running, credits and the ETA."""

    def __init__(self, total: int | None, credits: Callable[[], int]) -> None:
        self.total = total
        self.credits = credits
        self.done = 0
        self.failed = 0
        self.running: set[int] = set()
        self.finished_now = 0
        self.started = time.monotonic()

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def add(self, event: BatchEvent) -> None:
        kind, position = event.kind, event.position
        if kind in (BatchEventKind.SUBMITTED, BatchEventKind.RESUMED) and position is not None:
            self.running.add(position)
        elif kind in (
            BatchEventKind.SUCCEEDED,
            BatchEventKind.FAILED,
            BatchEventKind.UNCERTAIN,
            BatchEventKind.SKIPPED,
        ):
            if position is not None:
                self.running.discard(position)
            if kind is BatchEventKind.SUCCEEDED:
                self.done += 1
            else:
                self.failed += 1
            if not event.earlier:
                self.finished_now += 1

    def eta(self) -> float | None:
        if self.total is None or self.finished_now == 0:
            return None
        rate = self.finished_now / max(time.monotonic() - self.started, 1e-6)
        return max(0, self.total - self.finished) / rate

    def line(self) -> str:
        return (
            f"{self.done} done, {self.failed} failed, {len(self.running)} running · "
            f"{self.credits()} credits · ETA {_eta(self.eta())}"
        )


class _View:
    """Where a command's progress goes; subclasses render it as JSON, plain lines or live."""

    def __init__(self, stream: TextIO, tally: _Tally) -> None:
        self.stream = stream
        self.tally = tally
        self._skips = 0

    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, event: BatchEvent) -> None:
        self.tally.add(event)

    def line(self, event: BatchEvent) -> str | None:
        """Return the line to show for *event*, or None (items done earlier and repeated skips
        are only counted, progress is only drawn)."""
        if event.kind is BatchEventKind.SUCCEEDED and event.earlier:
            return None
        if event.kind is BatchEventKind.SKIPPED:
            self._skips += 1
            if self._skips > 1:
                return None
            return f"{_event_line(event)} (so are the rest)"
        return _event_line(event)

    def note(self, text: str) -> None:
        _write(self.stream, text)

    def summary(self, summary: BatchSummary, exit_code: int, *, show_journal: bool) -> None:
        _write(self.stream, "summary")
        for name, value in _summary_rows(summary, self.tally.total, show_journal=show_journal):
            _write(self.stream, f"  {name:<11}{value}")
        problems = _problem_lines(summary)
        if problems:
            _write(self.stream, "problems")
            for line in problems:
                _write(self.stream, f"  {line}")

    def result(self, data: dict[str, Any], lines: Sequence[str]) -> None:
        """Print a single task's final lines (paths or URLs) on standard output."""
        for line in lines:
            _write(sys.stdout, line)


class _PlainView(_View):
    """One line per event that matters, no animation (for pipes, logs and CI)."""

    def event(self, event: BatchEvent) -> None:
        super().event(event)
        line = self.line(event)
        if line is not None:
            _write(self.stream, line)


class _JsonView(_View):
    """One JSON object per line: every event, then the final object."""

    def event(self, event: BatchEvent) -> None:
        super().event(event)
        _write(self.stream, json.dumps(_event_json(event), ensure_ascii=False))

    def note(self, text: str) -> None:
        return None  # notes are for people; the events say it all

    def summary(self, summary: BatchSummary, exit_code: int, *, show_journal: bool) -> None:
        _write(
            self.stream,
            json.dumps(_summary_json(summary, exit_code, self.tally.total), ensure_ascii=False),
        )

    def result(self, data: dict[str, Any], lines: Sequence[str]) -> None:
        _write(sys.stdout, json.dumps(data, ensure_ascii=False))


class _RichView(_View):
    """A live display: an overall bar with counts and ETA, and one bar per running task."""

    def __init__(self, stream: TextIO, tally: _Tally, *, title: str | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

        super().__init__(stream, tally)
        self._console = Console(file=stream, highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=28),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._console,
        )
        self._overall: TaskID | None = None
        if title is not None:
            self._overall = self._progress.add_task(
                _escape(title), total=tally.total, info=tally.line()
            )
        self._rows: dict[int | None, TaskID] = {}

    def __enter__(self) -> _View:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _print(self, text: str, style: str | None = None) -> None:
        from rich.text import Text

        self._progress.console.print(Text(text, style=style or ""))

    def event(self, event: BatchEvent) -> None:
        super().event(event)
        kind, position = event.kind, event.position
        line: str | None = None
        if kind in (BatchEventKind.SUBMITTED, BatchEventKind.RESUMED):
            if len(self._rows) < _MAX_ROWS and position not in self._rows:
                label = f"{_where(position)}{_short(event.prompt, 36)}"
                self._rows[position] = self._progress.add_task(
                    _escape(label), total=100, info=_escape(event.task_id or "")
                )
        elif kind is BatchEventKind.PROGRESS:
            row = self._rows.get(position)
            if row is not None:
                self._progress.update(row, completed=event.progress or 0)
        elif kind in (
            BatchEventKind.SUCCEEDED,
            BatchEventKind.FAILED,
            BatchEventKind.UNCERTAIN,
            BatchEventKind.SKIPPED,
        ):
            row = self._rows.pop(position, None)
            if row is not None:
                self._progress.remove_task(row)
            line = self.line(event)
        else:
            line = self.line(event)
        if self._overall is not None:
            self._progress.update(
                self._overall, completed=self.tally.finished, info=_escape(self.tally.line())
            )
        if line is not None:
            # Redraw first: a line printed above the display comes with its last drawing.
            self._progress.refresh()
            style = {BatchEventKind.SUCCEEDED: "green", BatchEventKind.FAILED: "red"}.get(
                event.kind, "yellow"
            )
            self._print(line, style)

    def note(self, text: str) -> None:
        self._print(text, "bold")

    def summary(self, summary: BatchSummary, exit_code: int, *, show_journal: bool) -> None:
        from rich.table import Table

        table = Table(title="summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for name, value in _summary_rows(summary, self.tally.total, show_journal=show_journal):
            table.add_row(name, value)
        self._console.print(table)
        for line in _problem_lines(summary):
            self._console.print(line, style="red", markup=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _view(
    args: argparse.Namespace,
    stream: TextIO,
    *,
    total: int | None,
    credits: Callable[[], int],
    title: str | None,
) -> _View:
    tally = _Tally(total, credits)
    if getattr(args, "json", False):
        return _JsonView(sys.stdout, tally)
    if stream.isatty() and _has_rich():
        return _RichView(stream, tally, title=title)
    return _PlainView(stream, tally)


# --- shared options ----------------------------------------------------------------------------


def _api_key(args: argparse.Namespace) -> str:
    key: str = args.api_key or os.environ.get(API_KEY_ENV, "")
    if not key.strip():
        raise UsageError(f"no API key: pass --api-key or set {API_KEY_ENV}")
    return key.strip()


def _poll_policy(args: argparse.Namespace) -> PollPolicy:
    speed = args.poll_speed
    if speed is None:
        raw = os.environ.get(POLL_SPEED_ENV, "").strip()
        if raw:
            try:
                speed = float(raw)
            except ValueError:
                raise UsageError(f"{POLL_SPEED_ENV} must be a number; got {raw!r}") from None
    if speed is None:
        return PollPolicy()
    if not speed > 0:
        raise UsageError("the poll speed must be positive")
    return PollPolicy(speed=speed)


def _client(
    args: argparse.Namespace, *, max_concurrency: int = DEFAULT_MAX_CONCURRENCY, **options: Any
) -> Client:
    try:
        return Client(
            _api_key(args),
            base_url=args.base_url,
            max_concurrency=max_concurrency,
            poll=_poll_policy(args),
            **options,
        )
    except InvalidRequestError as exc:
        raise UsageError(str(exc)) from exc


def _number_arg(
    cast: Callable[[str], float], what: str, *, minimum: float, inclusive: bool
) -> Callable[[str], float]:
    """Return an argparse type: *cast* the text and check it against *minimum*."""

    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum):  # NaN fails too
            rule = "at least" if inclusive else "more than"
            raise argparse.ArgumentTypeError(f"must be {rule} {minimum:g}: {text!r}")
        return value

    return parse


_positive_int = _number_arg(int, "a whole number", minimum=1, inclusive=True)
_credits_arg = _number_arg(int, "a whole number of credits", minimum=0, inclusive=True)
_positive_float = _number_arg(float, "a number", minimum=0, inclusive=False)


def _retry_listener(view: _View) -> Callable[[RetryEvent], None]:
    def listen(event: RetryEvent) -> None:
        view.event(retry_event(event))

    return listen


# --- reading batch input -----------------------------------------------------------------------


@attrs.frozen
class _Defaults:
    model: str
    aspect_ratio: str
    image_size: str


def _input_format(path: Path, given: str) -> str:
    if given != "auto":
        return given
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "text"


def _open_input(path: Path) -> IO[str]:
    try:
        return path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _scan(path: Path, fmt: str) -> int:
    """Check the input can be read (and a CSV header is right); return how many items it holds."""
    try:
        with _open_input(path) as stream:
            if fmt != "csv":
                return sum(1 for line in stream if line.strip())
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                return 0
            names = [name.strip() for name in header]
            unknown = [name for name in names if name not in INPUT_FIELDS]
            if "prompt" not in names or unknown:
                raise UsageError(
                    f"{path}: the header row must name a 'prompt' column and only these "
                    f"columns: {', '.join(INPUT_FIELDS)}"
                )
            return sum(1 for row in reader if any(cell.strip() for cell in row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc


def _bad(path: Path, line: int, rule: str) -> InvalidRequestError:
    return InvalidRequestError(f"{path}, line {line}", rule)


def _reference(value: str, base: Path) -> str:
    if value[:8].lower().startswith(("http://", "https://", "data:")):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _request(
    path: Path, line: int, fields: dict[str, Any], defaults: _Defaults, *, split: bool
) -> GenerationRequest | InvalidRequestError:
    unknown = sorted(set(fields) - set(INPUT_FIELDS))
    if unknown:
        return _bad(path, line, f"unknown field {unknown[0]!r}; expected {', '.join(INPUT_FIELDS)}")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        return _bad(path, line, "prompt: missing, or not text")
    values: dict[str, str] = {}
    for name in ("model", "aspect_ratio", "image_size"):
        value = fields.get(name)
        if value is None or value == "":
            value = getattr(defaults, name)
        if not isinstance(value, str):
            return _bad(path, line, f"{name}: must be text")
        values[name] = value
    images = fields.get("images")
    if images is None or images == "":
        references: list[str] = []
    elif isinstance(images, str):
        parts = images.split(CSV_IMAGE_SEPARATOR) if split else [images]
        references = [part.strip() for part in parts if part.strip()]
    elif isinstance(images, list) and all(isinstance(item, str) for item in images):
        references = images
    else:
        return _bad(path, line, "images: must be a string or a list of strings")
    base = path.parent
    try:
        return GenerationRequest(
            prompt=prompt,
            model=values["model"],
            aspect_ratio=values["aspect_ratio"],
            image_size=values["image_size"],
            images=[_reference(item, base) for item in references],
        )
    except InvalidRequestError as exc:
        return _bad(path, line, str(exc))


def _read_input(
    path: Path, fmt: str, defaults: _Defaults
) -> Iterator[GenerationRequest | InvalidRequestError]:
    """Yield the input's requests lazily; an unreadable line becomes an `InvalidRequestError`."""
    with _open_input(path) as stream:
        if fmt == "csv":
            reader = csv.DictReader(stream)
            if reader.fieldnames is not None:
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            for row in reader:
                cells = {name: (value or "").strip() for name, value in row.items() if name}
                if None in row:
                    yield _bad(path, reader.line_num, "more cells than the header has columns")
                elif any(cells.values()):
                    fields = {name: value for name, value in cells.items() if value}
                    yield _request(path, reader.line_num, fields, defaults, split=True)
            return
        for number, line in enumerate(stream, 1):
            text = line.strip()
            if not text:
                continue
            if fmt == "text":
                yield _request(path, number, {"prompt": text}, defaults, split=False)
                continue
            try:
                fields = json.loads(text)
            except ValueError as exc:
                yield _bad(path, number, f"not valid JSON ({exc})")
                continue
            if not isinstance(fields, dict):
                yield _bad(path, number, "expected a JSON object")
                continue
            yield _request(path, number, fields, defaults, split=False)


# --- commands ----------------------------------------------------------------------------------


async def _run_batch(batch: Batch, view: _View) -> BatchSummary:
    """Run *batch* with Ctrl-C (and SIGTERM) stopping it cleanly; a second Ctrl-C abandons it."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def interrupt() -> None:
        if batch.stopping:
            if main is not None:
                main.cancel()
            return
        view.note("stopping: creates already on their way are journaled (Ctrl-C again to quit)")
        batch.stop()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, interrupt)
            installed.append(signum)
    try:
        with view:
            return await batch.run(on_event=view.event)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _batch_command(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    path = Path(args.input)
    fmt = _input_format(path, args.format)
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    total = _scan(path, fmt)
    out = Path(args.out)
    journal = Path(args.journal) if args.journal else out / JOURNAL_NAME
    budget = None
    if args.budget is not None:
        # The budget covers the whole batch: what earlier runs spent counts against it.
        budget = max(0, args.budget - journal_credits(journal))
    defaults = _Defaults(args.model, args.aspect_ratio, args.image_size)
    return _batch_async(args, path, fmt, total, out, journal, budget, defaults)


async def _batch_async(
    args: argparse.Namespace,
    path: Path,
    fmt: str,
    total: int,
    out: Path,
    journal: Path,
    budget: int | None,
    defaults: _Defaults,
) -> int:
    async with _client(args, max_concurrency=args.concurrency, max_credits=budget) as client:
        batch = Batch(
            client,
            _read_input(path, fmt, defaults),
            out,
            journal=journal,
            concurrency=args.concurrency,
            retry_uncertain=args.retry_uncertain,
            retry_failed=args.retry_failed,
        )
        view = _view(
            args,
            sys.stdout,
            total=total,
            credits=lambda: client.credits.spent,
            title=path.name,
        )
        summary = await _run_batch(batch, view)
    code = _exit_code(summary)
    view.summary(summary, code, show_journal=True)
    return code


async def _demo_command(args: argparse.Namespace) -> int:
    from .testing import Emulator

    out = Path(args.out)
    requests = [
        GenerationRequest(prompt=prompt, model=model, aspect_ratio=ratio, image_size=size)
        for prompt, model, ratio, size in DEMO_REQUESTS
    ]
    # The emulator is on 127.0.0.1 in this process (the client never uses a proxy for loopback).
    async with (
        Emulator(speed=DEMO_SPEED, image_downscale=DEMO_DOWNSCALE) as emulator,
        Client(
            emulator.api_key,
            base_url=emulator.base_url,
            max_concurrency=len(requests),
            poll=PollPolicy(speed=DEMO_SPEED, max_interval=2.0),
        ) as client,
    ):
        view = _view(
            args,
            sys.stdout,
            total=len(requests),
            credits=lambda: client.credits.spent,
            title="demo",
        )
        view.note(
            f"demo: {len(requests)} generations on the built-in emulator at {DEMO_SPEED:g}x "
            "speed (no key, no network)"
        )
        with tempfile.TemporaryDirectory(prefix="nanobanana-demo-") as folder:
            batch = Batch(client, requests, out, journal=Path(folder) / JOURNAL_NAME)
            summary = await _run_batch(batch, view)
    code = _exit_code(summary)
    view.summary(summary, code, show_journal=False)
    if code == EXIT_OK:
        view.note(
            f"Done: {summary.succeeded} PNGs in {out}{os.sep}. With a key, try: "
            f"nanobanana generate 'a banana cat'"
        )
    return code


def _save_target(out: str | None, stem: str) -> Path:
    if out is None:
        return Path(stem)
    target = Path(out)
    if target.is_dir() or out.endswith(("/", os.sep)):
        return target / stem
    return target


async def _save(result: TaskResult, out: str | None, stem: str) -> list[Path]:
    target = _save_target(out, stem)
    paths = []
    for n, image in enumerate(result.images):
        name = target if n == 0 else target.with_name(f"{target.stem}-{n}{target.suffix}")
        paths.append(await image.save(name))
    return paths


def _result_json(task_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"event": "result", "task_id": task_id, "status": status, **fields}


async def _follow(view: _View, task: Task, prompt: str | None) -> TaskResult | None:
    """Show the task's progress; return its result, or None (after showing why) if it failed."""
    try:
        return await follow(task, view.event, prompt=prompt)
    except TaskFailedError as exc:
        view.event(
            BatchEvent(kind=BatchEventKind.FAILED, prompt=prompt, task_id=task.id, message=str(exc))
        )
        return None


@attrs.frozen
class _Outcome:
    """A single task's end: exit code, the final JSON object and the lines for stdout."""

    code: int
    data: dict[str, Any]
    lines: list[str]


async def _conclude(
    view: _View,
    task: Task,
    result: TaskResult | None,
    *,
    prompt: str | None,
    out: str | None,
    stem: str | None,
) -> _Outcome:
    """Save the images (when *stem* is given) and describe how the task ended."""
    if result is None:
        snapshot = task.snapshot
        data = _result_json(
            task.id, "failed", failure_reason=snapshot.failure_reason, error=snapshot.error
        )
        return _Outcome(EXIT_FAILED, data, [])
    if stem is None:
        urls = [image.url for image in result.images]
        return _Outcome(
            EXIT_OK, _result_json(task.id, "succeeded", cost=result.credits_cost, urls=urls), urls
        )
    paths = await _save(result, out, stem)
    view.event(
        BatchEvent(
            kind=BatchEventKind.SUCCEEDED,
            prompt=prompt,
            task_id=task.id,
            cost=result.credits_cost,
            paths=tuple(paths),
        )
    )
    names = [str(path) for path in paths]
    data = _result_json(task.id, "succeeded", cost=result.credits_cost, paths=names)
    return _Outcome(EXIT_OK, data, names)


async def _generate_command(args: argparse.Namespace) -> int:
    try:
        request = GenerationRequest(
            prompt=args.prompt,
            model=args.model,
            aspect_ratio=args.aspect_ratio,
            image_size=args.image_size,
            images=args.image or [],
        )
    except InvalidRequestError as exc:
        raise UsageError(str(exc)) from exc
    async with _client(args, max_concurrency=1) as client:
        view = _view(args, sys.stderr, total=1, credits=lambda: client.credits.spent, title=None)
        client.add_retry_listener(_retry_listener(view))
        with view:
            task = await client.submit(request)
            view.event(
                BatchEvent(
                    kind=BatchEventKind.SUBMITTED,
                    prompt=request.prompt,
                    task_id=task.id,
                    # Not public on Task yet: the client keeps the create's cost on its state.
                    cost=task.credits_cost,
                )
            )
            result = await _follow(view, task, request.prompt)
            stem = f"{slugify(request.prompt)}-{task.id[-8:]}"
            outcome = await _conclude(
                view, task, result, prompt=request.prompt, out=args.out, stem=stem
            )
    view.result(outcome.data, outcome.lines)
    return outcome.code


async def _wait_command(args: argparse.Namespace) -> int:
    async with _client(args, max_concurrency=1) as client:
        view = _view(args, sys.stderr, total=1, credits=lambda: 0, title=None)
        client.add_retry_listener(_retry_listener(view))
        with view:
            task = client.task(args.task_id)
            view.event(BatchEvent(kind=BatchEventKind.RESUMED, task_id=task.id, prompt=task.id))
            result = await _follow(view, task, task.id)
            stem = task.id if args.out is not None else None
            outcome = await _conclude(view, task, result, prompt=None, out=args.out, stem=stem)
    view.result(outcome.data, outcome.lines)
    return outcome.code


async def _status_command(args: argparse.Namespace) -> int:
    async with _client(args, max_concurrency=1) as client:
        snapshot = await client.get(args.task_id)
    failed = snapshot.status is TaskStatus.FAILED
    if args.json:
        data: dict[str, Any] = unstructure(snapshot)
        data["status"] = snapshot.status.value
        data["results"] = [
            {"url": image.url, "content": image.content} for image in snapshot.results
        ]
        _write(sys.stdout, json.dumps({"event": "status", **data}, ensure_ascii=False))
        return EXIT_FAILED if failed else EXIT_OK
    _write(sys.stdout, f"{snapshot.id}: {snapshot.status.value} ({snapshot.progress}%)")
    for image in snapshot.results:
        _write(sys.stdout, f"  {image.url}")
    if failed:
        _write(sys.stdout, f"  failure_reason: {snapshot.failure_reason}")
        if snapshot.error:
            _write(sys.stdout, f"  error: {snapshot.error}")
    return EXIT_FAILED if failed else EXIT_OK


def _emulator_command(args: argparse.Namespace) -> int:
    from .testing._serve import serve

    serve(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        credits=args.credits,
        speed=args.speed,
    )
    return EXIT_OK


# --- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the ``nanobanana`` argument parser."""
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api-key", help=f"the API key (default: ${API_KEY_ENV})")
    api.add_argument(
        "--base-url",
        help=f"the API's base URL (default: ${BASE_URL_ENV}, then https://nanobananapro.cloud)",
    )
    api.add_argument(
        "--poll-speed",
        type=_positive_float,
        default=None,
        help=argparse.SUPPRESS,  # advanced: divides poll delays, like $NANOBANANA_POLL_SPEED
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", help="print one JSON object per line (events, then result)"
    )
    request = argparse.ArgumentParser(add_help=False)
    request.add_argument("--model", default=DEFAULT_MODEL, help="default: %(default)s")
    request.add_argument(
        "--aspect-ratio", default=DEFAULT_ASPECT_RATIO, help="e.g. 16:9 (default: %(default)s)"
    )
    request.add_argument(
        "--image-size", default=DEFAULT_IMAGE_SIZE, help="1K, 2K or 4K (default: %(default)s)"
    )

    parser = argparse.ArgumentParser(
        prog="nanobanana",
        description="Generate images with the Nano Banana API, one or thousands at a time.",
        epilog="Exit codes: 0 all done, 1 something failed, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"nanobanana-async {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    generate = commands.add_parser(
        "generate",
        parents=[api, output, request],
        help="generate one image and save it",
        description="Generate one image, show its progress, save it and print its path.",
    )
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument(
        "--image",
        action="extend",
        nargs="+",
        metavar="PATH_OR_URL",
        help="a reference image (repeatable; makes it image-to-image)",
    )
    generate.add_argument(
        "--out", metavar="PATH", help="file or folder to save to (default: a name from the prompt)"
    )
    generate.set_defaults(run=_generate_command)

    batch = commands.add_parser(
        "batch",
        parents=[api, output, request],
        help="run a file of prompts, resumably",
        description=(
            "Run every prompt of INPUT (text: one prompt a line; .jsonl: one object a line; "
            ".csv: a header row) and save the images in OUT. Progress is journaled: running "
            "the same command again resumes, never paying twice for a prompt."
        ),
    )
    batch.add_argument("input", metavar="INPUT")
    batch.add_argument("--out", required=True, metavar="DIR", help="folder for the images")
    batch.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="N",
        help="generations in flight at once (default: %(default)s)",
    )
    batch.add_argument(
        "--budget",
        type=_credits_arg,
        metavar="CREDITS",
        help="the most credits the batch may spend, earlier runs of its journal included",
    )
    batch.add_argument("--journal", metavar="PATH", help="default: OUT/journal.jsonl")
    batch.add_argument(
        "--format",
        choices=("auto", "text", "jsonl", "csv"),
        default="auto",
        help="input format (default: by the file's suffix)",
    )
    batch.add_argument(
        "--retry-uncertain",
        action="store_true",
        help="send again creates that may have been charged (their answer was lost)",
    )
    batch.add_argument(
        "--retry-failed", action="store_true", help="send again items whose task failed"
    )
    batch.set_defaults(run=_batch_command)

    status = commands.add_parser(
        "status", parents=[api, output], help="show a task's status (one poll)"
    )
    status.add_argument("task_id", metavar="TASK_ID")
    status.set_defaults(run=_status_command)

    wait = commands.add_parser(
        "wait", parents=[api, output], help="wait for a task, then save or print its images"
    )
    wait.add_argument("task_id", metavar="TASK_ID")
    wait.add_argument(
        "--out", metavar="PATH", help="file or folder to save to (default: print the URLs)"
    )
    wait.set_defaults(run=_wait_command)

    emulator = commands.add_parser(
        "emulator", help="serve the API emulator locally (for tests and demos)"
    )
    emulator.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    emulator.add_argument("--port", type=int, default=8765, help="0 picks one (default: 8765)")
    emulator.add_argument("--api-key", help="the key it accepts (default: a random one, printed)")
    emulator.add_argument(
        "--credits", type=_credits_arg, help="the key's balance (default: unlimited)"
    )
    emulator.add_argument(
        "--speed", type=_positive_float, default=1.0, help="time scale (default: 1.0)"
    )
    emulator.set_defaults(run=_emulator_command)

    demo = commands.add_parser(
        "demo",
        parents=[output],
        help="run a small batch on the built-in emulator (no key, no network)",
    )
    demo.add_argument("--out", default=DEMO_OUT, metavar="DIR", help="default: %(default)s")
    demo.set_defaults(run=_demo_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nanobanana`` command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        outcome = args.run(args)
        if asyncio.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        return int(outcome)
    except (UsageError, InvalidRequestError) as exc:
        _write(sys.stderr, f"nanobanana: error: {exc}")
        return EXIT_USAGE
    except NanoBananaError as exc:
        _write(sys.stderr, f"nanobanana: error: {exc}")
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        _write(sys.stderr, "nanobanana: interrupted")
        return EXIT_INTERRUPTED
