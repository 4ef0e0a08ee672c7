"""How the command shows its work: plain lines, JSON lines or a live display (with ``rich``)."""

from __future__ import annotations

import argparse
import enum
import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from .._events import BatchEvent, BatchEventKind, BatchItemStatus, BatchSummary
from .._gallery import GALLERY_NAME

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_MAX_ROWS = 8  # per-task rows in the live display
_MAX_PROBLEMS = 20  # problem lines listed under the summary (identical problems share one)
#: Said after every "uncertain" line: how to send such an item again, knowing the risk.
RETRY_UNCERTAIN_HINT = "(may have been charged; --retry-uncertain sends it again)"


# --- output ------------------------------------------------------------------------------------

#: Format characters that reorder or hide text on a terminal (bidi overrides, isolates, marks).
_INVISIBLE = frozenset(
    "\u061c\u200b\u200c\u200d\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2066\u2067\u2068\u2069\ufeff"
)


def _escaped(char: str) -> str:
    if char in "\t\n\r":
        return " "  # a server's line break must not forge a line of ours
    if unicodedata.category(char) == "Cc" or char in _INVISIBLE:
        # JSON's own escape: inside a JSON string it stands for the same character.
        return f"\\u{ord(char):04x}"
    return char


#: Every character `safe` rewrites: C0 and C1 controls, DEL, and `_INVISIBLE`.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f" + "".join(sorted(_INVISIBLE)) + "]")


def safe(text: str) -> str:
    """Return *text* fit for a terminal: one line, no control or bidi character left raw.

    Server text (a failure reason, an error body), file names and prompts can hold ESC, OSC or
    CSI sequences that retitle the window, clear the screen or fake output; C0 and C1 controls,
    DEL, bidi overrides and invisible format characters become visible ``\\uXXXX`` escapes (in a
    JSON line, the same escape JSON uses), and line breaks become spaces. Every line the command
    prints goes through it.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda match: _escaped(match.group()), text)


def write(stream: TextIO, text: str) -> None:
    """Write one line, made `safe`, and flush it (a pipe reader sees each line as it happens)."""
    stream.write(safe(text) + "\n")
    stream.flush()


def _short(text: str | None, limit: int = 48) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _where(position: int | None) -> str:
    return f"#{position} " if position is not None else ""


def event_line(event: BatchEvent) -> str | None:
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
        return f"uncertain  {where}{event.message} {RETRY_UNCERTAIN_HINT}"
    if kind is BatchEventKind.SKIPPED:
        return f"skipped    {where}{event.message}"
    if kind is BatchEventKind.RETRYING:
        return f"retrying   {where}in {event.wait or 0:.1f} s after {event.message}"
    if kind is BatchEventKind.RATE_LIMITED:
        return f"rate limited: every request waits {event.wait or 0:.1f} s ({event.message})"
    return None


def _plain_value(_: Any, __: Any, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def plain(value: Any) -> dict[str, Any]:
    """Return an attrs value of ours as a JSON-ready dict (the command line's own serialiser).

    Fields that hold callables or other private state (`eq=False` fields) are left out.
    """
    data: dict[str, Any] = attrs.asdict(
        value,
        recurse=True,
        filter=lambda field, _: field.eq and not field.name.startswith("_"),
        value_serializer=_plain_value,
    )
    return data


def event_json(event: BatchEvent) -> dict[str, Any]:
    """Return the JSON object for *event*."""
    data = plain(event)
    kind = data.pop("kind")
    return {"event": str(kind), **data}


def _unfinished(summary: BatchSummary, total: int | None) -> int:
    """Items of the input not finished: stopped, or never read because the run stopped."""
    ended = summary.succeeded + summary.failed + summary.uncertain + summary.skipped
    return max(total if total is not None else summary.total, summary.total) - ended


def summary_json(
    summary: BatchSummary, exit_code: int, total: int | None, *, show_journal: bool = True
) -> dict[str, Any]:
    """Return the final JSON object of a batch (the journal is None when the run kept none)."""
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
        "gallery": None if (page := gallery_page(summary)) is None else str(page),
        "journal": str(summary.journal) if show_journal else None,
        "exit_code": exit_code,
        "problems": problems,
    }


def gallery_page(summary: BatchSummary) -> Path | None:
    """Return the batch's gallery page, if it was written."""
    page = summary.out_dir / GALLERY_NAME
    return page if page.is_file() else None


def summary_rows(
    summary: BatchSummary, total: int | None, *, show_journal: bool
) -> list[tuple[str, str]]:
    """Return the (name, value) rows of the summary table."""
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
    page = gallery_page(summary)
    if page is not None:
        rows.append(("gallery", str(page)))
    if show_journal:
        rows.append(("journal", str(summary.journal)))
    return rows


def positions_text(positions: Sequence[int]) -> str:
    """Return positions as short ranges: ``#0-#3, #7``."""
    spans: list[list[int]] = []
    for position in sorted(positions):
        if spans and position == spans[-1][1] + 1:
            spans[-1][1] = position
        else:
            spans.append([position, position])
    return ", ".join(f"#{a}" if a == b else f"#{a}-#{b}" for a, b in spans)


def problem_lines(summary: BatchSummary) -> list[str]:
    """Return one line per distinct problem: items failing the same way share a line."""
    groups: dict[tuple[str, str], list[int]] = {}
    for item in summary.items:
        if item.status in (
            BatchItemStatus.FAILED,
            BatchItemStatus.UNCERTAIN,
            BatchItemStatus.SKIPPED,
        ):
            groups.setdefault((str(item.status), str(item.error)), []).append(item.position)
    lines = []
    for (status, error), positions in list(groups.items())[:_MAX_PROBLEMS]:
        count = f" ({len(positions)} items)" if len(positions) > 1 else ""
        hint = f" {RETRY_UNCERTAIN_HINT}" if status == str(BatchItemStatus.UNCERTAIN) else ""
        lines.append(f"{positions_text(positions)} {status}{count}: {error}{hint}")
    if len(groups) > _MAX_PROBLEMS:
        lines.append(f"... and {len(groups) - _MAX_PROBLEMS} more (see the journal)")
    return lines


def summary_exit_code(summary: BatchSummary) -> int:
    """Return the exit code of a finished batch."""
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if summary.ok else EXIT_FAILED


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Tally:
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


class View:
    """Where a command's progress goes; subclasses render it as JSON, plain lines or live."""

    def __init__(self, stream: TextIO, tally: Tally) -> None:
        self.stream = stream
        self.tally = tally
        self._skips = 0

    def __enter__(self) -> View:
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
            return f"{event_line(event)} (so are the rest)"
        return event_line(event)

    def note(self, text: str) -> None:
        write(self.stream, text)

    def summary(self, summary: BatchSummary, exit_code: int, *, show_journal: bool) -> None:
        write(self.stream, "summary")
        for name, value in summary_rows(summary, self.tally.total, show_journal=show_journal):
            write(self.stream, f"  {name:<11}{value}")
        problems = problem_lines(summary)
        if problems:
            write(self.stream, "problems")
            for line in problems:
                write(self.stream, f"  {line}")

    def result(self, data: dict[str, Any], lines: Sequence[str]) -> None:
        """Print a single task's final lines (paths or URLs) on standard output."""
        for line in lines:
            write(sys.stdout, line)


class PlainView(View):
    """One line per event that matters, no animation (for pipes, logs and CI)."""

    def event(self, event: BatchEvent) -> None:
        super().event(event)
        line = self.line(event)
        if line is not None:
            write(self.stream, line)


class JsonView(View):
    """One JSON object per line: every event, then the final object."""

    def event(self, event: BatchEvent) -> None:
        super().event(event)
        write(self.stream, json.dumps(event_json(event), ensure_ascii=False))

    def note(self, text: str) -> None:
        return None  # notes are for people; the events say it all

    def summary(self, summary: BatchSummary, exit_code: int, *, show_journal: bool) -> None:
        write(
            self.stream,
            json.dumps(
                summary_json(summary, exit_code, self.tally.total, show_journal=show_journal),
                ensure_ascii=False,
            ),
        )

    def result(self, data: dict[str, Any], lines: Sequence[str]) -> None:
        write(sys.stdout, json.dumps(data, ensure_ascii=False))


class RichView(View):
    """A live display: an overall bar with counts and ETA, and one bar per running task."""

    def __init__(self, stream: TextIO, tally: Tally, *, title: str | None) -> None:
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

    def __enter__(self) -> View:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _print(self, text: str, style: str | None = None) -> None:
        from rich.text import Text

        self._progress.console.print(Text(safe(text), style=style or ""))

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
        for name, value in summary_rows(summary, self.tally.total, show_journal=show_journal):
            table.add_row(safe(name), safe(value))
        self._console.print(table, markup=False)
        for line in problem_lines(summary):
            self._console.print(safe(line), style="red", markup=False)


def _escape(text: str) -> str:
    """Return *text* made `safe` and escaped for rich's markup (task labels and infos)."""
    from rich.markup import escape

    return escape(safe(text))


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def make_view(
    args: argparse.Namespace,
    stream: TextIO,
    *,
    total: int | None,
    credits: Callable[[], int],
    title: str | None,
) -> View:
    """Return the view for the command's options: JSON, live (a terminal with rich) or plain."""
    tally = Tally(total, credits)
    if getattr(args, "json", False):
        return JsonView(sys.stdout, tally)
    if stream.isatty() and _has_rich():
        return RichView(stream, tally, title=title)
    return PlainView(stream, tally)
