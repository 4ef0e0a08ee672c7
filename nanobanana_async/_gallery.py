"""The gallery: one static ``index.html`` beside a batch's images, rendered from its journal.

The page is self-contained: inline CSS, no script, nothing fetched from anywhere, and a
Content-Security-Policy that allows nothing but the images beside it. Every piece of text that
came from a user or a server (prompts, reasons, task ids, file names) is escaped. The file is
replaced atomically, so a browser never reads half a page; while the batch runs it reloads itself.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import html
import logging
import math
import os
import secrets
import struct
import threading
import time
from pathlib import Path
from urllib.parse import quote

import attrs

from ._errors import InvalidRequestError
from ._inputs import MODEL_COSTS
from ._journal import JOURNAL_NAME, JournalRecord, journal_lines, unreadable

logger = logging.getLogger("nanobanana_async")

#: The gallery's file name in the output folder.
GALLERY_NAME = "index.html"
#: Seconds between reloads of the page while its batch runs.
DEFAULT_GALLERY_REFRESH = 5.0
#: Items per page of a gallery: up to this many, ``index.html`` shows them all.
DEFAULT_GALLERY_PAGE_SIZE = 500
# Pages whose rendered cards are kept between writes (the pages a running batch touches).
_CACHED_PAGES = 4

# How a journal state shows, by whether the batch still runs: (css class, label).
_RUNNING_VIEW = {
    "succeeded": ("done", "done"),
    "failed": ("failed", "failed"),
    "uncertain": ("uncertain", "uncertain"),
    "submitting": ("running", "submitting"),
    "running": ("running", "running"),
    "unsent": ("unsent", "not sent"),
    "invalid": ("invalid", "invalid"),
}
_FINAL_VIEW = {
    **_RUNNING_VIEW,
    # A create with no answer when the run ended may have been charged.
    "submitting": ("uncertain", "uncertain"),
    # A task still running (or whose download failed) when the run ended: a rerun attaches to it.
    "running": ("running", "unfinished"),
}
_EXPLAIN = {
    ("failed", "failed"): "the service failed this task; its credits were refunded",
    ("submitting", "uncertain"): "the run stopped while its create was on its way",
    ("running", "unfinished"): (
        "the run ended before its images were saved; a rerun attaches to the task, never re-sends"
    ),
    ("unsent", "not sent"): "nothing was charged; a rerun sends it",
    ("invalid", "invalid"): "this input line is not a valid request: nothing was sent",
}
_UNCERTAIN_NOTE = "(may have been charged: re-sent only with --retry-uncertain)"
# Read at most this much of an image to find its pixel size (JPEG headers can be long).
_HEADER_BYTES = 64 * 1024


@attrs.frozen
class _Image:
    name: str
    width: int | None
    height: int | None
    size: int


def _entry(line: bytes) -> JournalRecord | None:
    """Read one journal line (the journal's own reader); None if it names no item."""
    record = JournalRecord.from_line(line)
    return record if record is not None and record.state in _RUNNING_VIEW else None


# --- image headers -----------------------------------------------------------------------------


def _pixel_size(path: Path) -> tuple[int, int] | None:
    """Return an image's (width, height) from its header (PNG, JPEG, GIF, WebP)."""
    try:
        with path.open("rb") as stream:
            head = stream.read(_HEADER_BYTES)
    except OSError:
        return None
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", head[6:10])
            return width, height
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(head)
    except struct.error:  # a header cut short
        return None
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and head[20:21] == b"\x2f":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", head[at + 2 : at + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


# --- rendering ---------------------------------------------------------------------------------

_CSS = """
:root{color-scheme:light dark;--bg:#f5f5f2;--card:#fff;--fg:#1c1c1a;--muted:#696963;
--line:#e0e0da;--done:#1f7a3a;--failed:#b3261e;--uncertain:#9a5b00;--running:#1f5fa8;
--unsent:#6b5ca5}
@media (prefers-color-scheme:dark){:root{--bg:#151514;--card:#21211f;--fg:#ebebe6;
--muted:#a2a29a;--line:#363632;--done:#5cc07a;--failed:#ff8a80;--uncertain:#f0b35a;
--running:#7fb0f0;--unsent:#b7a8ff}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{padding:18px 24px 14px;border-bottom:1px solid var(--line);background:var(--card)}
h1{margin:0 0 8px;font-size:19px;font-weight:650}
.stats{display:flex;flex-wrap:wrap;gap:6px 20px;margin:0;padding:0;list-style:none}
.stats b{font-size:16px;font-variant-numeric:tabular-nums}
.stats .done b{color:var(--done)}.stats .failed b{color:var(--failed)}
.stats .uncertain b{color:var(--uncertain)}.stats .running b{color:var(--running)}
.stats .unsent b{color:var(--unsent)}
.pages{margin:8px 0 0;display:flex;gap:14px;font-size:13px}
.pagelist{margin:0;padding:0 0 0 2.5em;grid-column:1/-1;columns:2 420px;column-gap:32px}
.pagelist li{padding:3px 0;break-inside:avoid;font-variant-numeric:tabular-nums}
.pagelist span{margin-left:10px;color:var(--muted);font-size:12px}
.pagelist .done{color:var(--done)}.pagelist .failed,.pagelist .invalid{color:var(--failed)}
.pagelist .uncertain{color:var(--uncertain)}.pagelist .running{color:var(--running)}
.pagelist .unsent{color:var(--unsent)}
a{color:var(--running)}
.when{margin:6px 0 0;color:var(--muted);font-size:12px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:16px;
padding:20px 24px 32px}
.empty{color:var(--muted)}
.card{display:flex;flex-direction:column;min-width:0;background:var(--card);
border:1px solid var(--line);border-top:4px solid var(--c,var(--line));border-radius:10px;
overflow:hidden}
.card.done{--c:var(--done)}.card.failed{--c:var(--failed)}.card.uncertain{--c:var(--uncertain)}
.card.running{--c:var(--running)}.card.unsent{--c:var(--unsent)}.card.invalid{--c:var(--failed)}
.thumbs{display:grid;grid-template-columns:repeat(var(--n,1),1fr);gap:2px;background:var(--line)}
.thumbs a{display:block;min-width:0}
.thumbs img{display:block;width:100%;height:auto;aspect-ratio:1;object-fit:cover;
background:var(--line)}
.slot{display:flex;align-items:center;justify-content:center;aspect-ratio:2;padding:12px;
color:var(--c);background:var(--bg);font-weight:650;letter-spacing:.06em;text-transform:uppercase}
.body{display:flex;flex-direction:column;gap:6px;padding:10px 12px 12px}
.top{display:flex;justify-content:space-between;gap:8px;color:var(--muted);font-size:12px}
.state{color:var(--c);font-weight:650;text-transform:uppercase;letter-spacing:.05em}
.prompt{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.meta{display:flex;flex-wrap:wrap;gap:2px 12px;margin:0;color:var(--muted);font-size:12px}
.reason{margin:0;padding:7px 9px;border-left:3px solid var(--c);background:var(--bg);
border-radius:4px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:13px}
.task{font:11px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--muted);
overflow-wrap:anywhere}
"""

# Nothing but the images beside the page may load: no script, no network, no form.
_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'none'"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _clock(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _estimate(model: str | None) -> int:
    """What a create of *model* may have cost (the dearest known price for unknown models)."""
    if model is not None and model in MODEL_COSTS:
        return MODEL_COSTS[model]
    return max(MODEL_COSTS.values())


# A file's identity for the card cache: its name and, if it exists, its size and mtime.
_FileToken = tuple[str, int, int] | tuple[str, None, None]


def _file_tokens(out_dir: Path, files: tuple[str, ...]) -> tuple[_FileToken, ...]:
    tokens: list[_FileToken] = []
    for name in files:
        try:
            stat = (out_dir / name).stat()
        except OSError:
            tokens.append((name, None, None))
        else:
            tokens.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(tokens)


def _card(
    entry: JournalRecord,
    started: float | None,
    files: tuple[_FileToken, ...],
    out_dir: Path,
    *,
    running: bool,
    now: float,
) -> str:
    css, label = (_RUNNING_VIEW if running else _FINAL_VIEW)[entry.state]
    parts = [f'<article class="card {css}" id="item-{entry.position}" data-state="{css}">']
    shown: list[_Image] = []
    missing: list[str] = []
    if entry.state == "succeeded":
        for name, size, _ in files:
            if size is None:
                missing.append(name)
                continue
            pixels = _pixel_size(out_dir / name)
            width, height = pixels if pixels is not None else (None, None)
            shown.append(_Image(name, width, height, size))
    if shown:
        alt = _e(entry.prompt)
        parts.append(f'<div class="thumbs" style="--n:{min(len(shown), 2)}">')
        for image in shown:
            src = _e(quote(image.name))
            box = (
                f' width="{image.width}" height="{image.height}"'
                if image.width and image.height
                else ""
            )
            parts.append(
                f'<a href="{src}"><img src="{src}" alt="{alt}" loading="lazy" '
                f'decoding="async"{box}></a>'
            )
        parts.append("</div>")
    else:
        word = "missing" if entry.state == "succeeded" else label
        parts.append(f'<div class="slot">{_e(word)}</div>')
    parts.append('<div class="body"><div class="top">')
    parts.append(f'<span class="state">{_e(label)}</span><span>#{entry.position}</span></div>')
    parts.append(f'<p class="prompt">{_e(entry.prompt)}</p>')

    meta = []
    if entry.model:
        meta.append(f'<span class="model">{_e(entry.model)}</span>')
    sizes = [text for text in (entry.aspect_ratio, entry.image_size) if text]
    sizes += [f"{i.width}\u00d7{i.height}" for i in shown if i.width and i.height]
    if sizes:
        meta.append(f'<span class="size">{_e(" · ".join(sizes))}</span>')
    if shown:
        meta.append(f'<span class="bytes">{_bytes(sum(i.size for i in shown))}</span>')
    credits = _credits_text(entry, css)
    if credits:
        meta.append(f'<span class="credits">{_e(credits)}</span>')
    if started is not None and entry.time:
        end = now if css == "running" and running else entry.time
        meta.append(f'<span class="took">{_duration(max(0.0, end - started))}</span>')
    if meta:
        parts.append(f'<p class="meta">{"".join(meta)}</p>')

    reasons = []
    if missing:
        reasons.append("image file missing: " + ", ".join(missing))
    if entry.error:
        reasons.append(entry.error)
    elif (entry.state, label) in _EXPLAIN:
        reasons.append(_EXPLAIN[entry.state, label])
    if css == "uncertain":
        reasons.append(_UNCERTAIN_NOTE)
    if reasons:
        parts.append(f'<p class="reason">{_e(chr(10).join(reasons))}</p>')
    if entry.task_id:
        parts.append(f'<span class="task">task {_e(entry.task_id)}</span>')
    parts.append("</div></article>")
    return "".join(parts)


def _credits_text(entry: JournalRecord, css: str) -> str | None:
    if css == "failed":
        return "refunded" if entry.state == "failed" else None
    if css in ("unsent", "invalid"):
        return "0 credits"
    if css == "uncertain":
        cost = entry.cost if entry.cost is not None else _estimate(entry.model)
        return f"up to {cost} credits"
    if entry.cost is None:
        return None
    return f"{entry.cost} credit" + ("" if entry.cost == 1 else "s")


def _charged(entry: JournalRecord) -> tuple[int, int]:
    """(credits certainly charged, credits maybe charged) for one item, as the journal says."""
    if entry.state in ("running", "succeeded"):
        return entry.cost or 0, 0
    if entry.state in ("submitting", "uncertain"):
        return 0, entry.cost if entry.cost is not None else _estimate(entry.model)
    return 0, 0


def _header(
    tally: _Tally,
    *,
    title: str,
    running: bool,
    refresh: float,
    now: float,
    scope: str | None = None,
    nav: str = "",
    skipped: int = 0,
) -> list[str]:
    """The page's head and its summary header (counts, credits, time), up to ``<main>``."""
    counts = tally.view_counts(running=running)
    failed = counts["failed"] + counts["invalid"]
    invalid = f" ({counts['invalid']} invalid input)" if counts["invalid"] else ""
    stats = [
        f'<li class="done"><b>{counts["done"]}</b> done</li>',
        f'<li class="failed"><b>{failed}</b> failed{invalid}</li>',
        f'<li class="uncertain"><b>{counts["uncertain"]}</b> uncertain</li>',
    ]
    if counts["running"]:
        word = "running" if running else "unfinished"
        stats.append(f'<li class="running"><b>{counts["running"]}</b> {word}</li>')
    if counts["unsent"]:
        stats.append(f'<li class="unsent"><b>{counts["unsent"]}</b> not sent</li>')
    note = f" + up to {tally.maybe} uncertain" if tally.maybe else ""
    stats.append(f'<li class="credits"><b>{tally.charged}</b> credits{note}</li>')
    items = tally.items
    when = f"{items:,} item" + ("" if items == 1 else "s")
    if scope is not None:
        when = f"{scope}: {when}"
    first, last = tally.first, tally.last
    if first is not None and last is not None:
        end = now if running else last
        stats.append(f'<li class="time"><b>{_duration(max(0.0, end - first))}</b> elapsed</li>')
        when += f" · started {_clock(first)}"
        if not running:
            when += f" · last change {_clock(last)}"
    if running:
        when += f" · running, updated {_clock(now)}, reloads every {refresh:g} s"
    if skipped:
        when += f" · {skipped:,} unreadable journal line{'' if skipped == 1 else 's'} skipped"

    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
    ]
    if running:
        head.append(f'<meta http-equiv="refresh" content="{max(1, math.ceil(refresh))}">')
    head += [
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f'<header><h1>{_e(title)}</h1><ul class="stats">{"".join(stats)}</ul>',
        f'<p class="when">{_e(when)}</p>{nav}</header>',
    ]
    return head


# --- the page's state ----------------------------------------------------------------------------

# Journal states by code: an item's state is kept as its index here (a small int, shared).
_STATES = ("submitting", "running", "succeeded", "failed", "uncertain", "unsent", "invalid")
_CODE = {state: code for code, state in enumerate(_STATES)}
_VIEW_CLASSES = ("done", "failed", "invalid", "uncertain", "running", "unsent")


class _Tally:
    """Counts of items by journal state, credits and times, kept up to date record by record."""

    __slots__ = ("by_state", "charged", "first", "last", "maybe")

    def __init__(self) -> None:
        self.by_state = [0] * len(_STATES)
        self.charged = 0
        self.maybe = 0
        self.first: float | None = None
        self.last: float | None = None

    @property
    def items(self) -> int:
        return sum(self.by_state)

    def add(self, item: _Item, sign: int) -> None:
        self.by_state[item.code] += sign
        self.charged += sign * item.sure
        self.maybe += sign * item.unsure

    def saw(self, started: float | None, moment: float) -> None:
        for value in (started, moment or None):
            if value is None:
                continue
            self.first = value if self.first is None else min(self.first, value)
            self.last = value if self.last is None else max(self.last, value)

    def merge(self, other: _Tally) -> None:
        for code, count in enumerate(other.by_state):
            self.by_state[code] += count
        self.charged += other.charged
        self.maybe += other.maybe
        for value in (other.first, other.last):
            if value is not None:
                self.saw(None, value)

    def view_counts(self, *, running: bool) -> dict[str, int]:
        view = _RUNNING_VIEW if running else _FINAL_VIEW
        counts = dict.fromkeys(_VIEW_CLASSES, 0)
        for code, count in enumerate(self.by_state):
            counts[view[_STATES[code]][0]] += count
        return counts

    def live(self) -> bool:
        """Whether items of this tally show as running while the batch runs."""
        return bool(self.by_state[_CODE["submitting"]] or self.by_state[_CODE["running"]])


class _Item:
    """Where an item's last journal record is, and what it adds to the counts (no text kept)."""

    __slots__ = ("code", "length", "offset", "page", "started", "sure", "unsure")

    def __init__(
        self, page: int, offset: int, length: int, code: int, sure: int, unsure: int, started: float
    ) -> None:
        self.page = page
        self.offset = offset
        self.length = length
        self.code = code
        self.sure = sure
        self.unsure = unsure
        self.started = started


class _Page:
    """The items whose position falls in one page, and whether its file must be rewritten."""

    __slots__ = ("dirty", "keys", "tally")

    def __init__(self) -> None:
        self.keys: set[int] = set()
        self.tally = _Tally()
        self.dirty = True


def _key_id(key: str) -> int:
    """A compact stand-in for an item's key: 64 bits of its hash (a key's text costs 113 B)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _replace(target: Path, text: str) -> None:
    """Write *text* to *target* through a temporary file of its own, moved into place."""
    # A name of its own, so that writers in other processes never share a temporary file.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        with temporary.open("x", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --- the public surface ------------------------------------------------------------------------


class Gallery:
    """A batch's gallery (``out_dir/index.html``), kept up to date cheaply while it runs.

    Up to `page_size` items, the page shows every item. Beyond, ``index.html`` summarises the
    batch (counts, credits, time, and one line per page with its own counts) and the items are
    shown on pages of at most `page_size` items each, by input position (``page-0001.html``...).
    Each `write` reads only the journal lines added since the last one and rewrites only the
    index and the pages whose items changed (or are running), so its cost follows what changed,
    not the batch's size, and the memory it keeps per item is a few small numbers, no text.
    Lines that hold no record are read in bounded pieces, skipped and counted (`skipped`, shown
    on the page); an unfinished last line is left for a later write (the batch may be writing it).
    It logs nothing, its batch warns. One-off pages: `write_gallery`. Safe to use from several
    threads.

    Args:
        out_dir: The batch's output folder (image paths in the page are relative to it).
        journal: The batch's journal; default ``out_dir/journal.jsonl``.
        refresh: Seconds between reloads of the page while the batch runs.
        title: The page's heading; default the folder's name.
        page_size: Items per page.

    Raises:
        InvalidRequestError: If *refresh* is not a positive number or *page_size* below 1.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        journal: str | os.PathLike[str] | None = None,
        *,
        refresh: float = DEFAULT_GALLERY_REFRESH,
        title: str | None = None,
        page_size: int = DEFAULT_GALLERY_PAGE_SIZE,
    ) -> None:
        if not (math.isfinite(refresh) and refresh > 0):
            raise InvalidRequestError("refresh", f"must be a positive number of seconds: {refresh}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise InvalidRequestError("page_size", f"must be at least 1: {page_size}")
        self._out_dir = Path(out_dir)
        self._journal = Path(journal) if journal is not None else self._out_dir / JOURNAL_NAME
        self._refresh = refresh
        self._title = title
        self._page_size = page_size
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None
        self._offset = 0
        self._items: dict[int, _Item] = {}
        self._pages: dict[int, _Page] = {}
        # Input lines found invalid, by position: a later record at that position replaces them.
        self._invalid_at: dict[int, int] = {}
        self._skipped = 0
        self._times = _Tally()
        self._written: tuple[bool, bool] | None = None  # (running, paged) of the last write
        # Rendered cards of the pages rendered last (a few pages, never the whole batch).
        self._cards: collections.OrderedDict[int, dict[str, tuple[tuple[object, ...], str]]] = (
            collections.OrderedDict()
        )

    def __repr__(self) -> str:
        return (
            f"nanobanana_async.Gallery(out_dir={str(self._out_dir)!r}, "
            f"journal={str(self._journal)!r})"
        )

    @property
    def path(self) -> Path:
        """Where the page is written: ``out_dir/index.html``."""
        return self._out_dir / GALLERY_NAME

    @property
    def journal(self) -> Path:
        """The journal the page is rendered from."""
        return self._journal

    @property
    def page_size(self) -> int:
        """Items per page."""
        return self._page_size

    @property
    def skipped(self) -> int:
        """Journal lines found unreadable (torn, garbage, too long, unknown state) and skipped.

        The count adds up over every `write` since the journal was first read (or replaced), not
        just the last one. An unfinished last line is not counted: a write waits for its end.
        """
        return self._skipped

    def page_path(self, number: int) -> Path:
        """Where page *number* (1 for input positions 0 to `page_size` - 1) is written."""
        return self._out_dir / _page_name(number)

    def write(self, *, running: bool = False, finished: bool = False) -> Path:
        """Render the gallery from the journal and replace what changed atomically; return its path.

        Args:
            running: Whether the batch still runs: the pages then reload themselves, and items in
                flight show as running rather than as unfinished or uncertain.
            finished: Whether nothing appends to the journal any more: an unfinished last line
                is then read as it is (counted in `skipped` if torn) instead of left for a later
                write.

        Raises:
            InvalidRequestError: If the journal does not exist.
            OSError: If a page cannot be written (the next write tries that page again).
        """
        with self._lock:
            fd = self._read(finished=finished)
            try:
                self._write(fd, running=running, now=time.time())
            finally:
                os.close(fd)
            return self.path

    # --- reading the journal ---------------------------------------------------------------------

    def _read(self, *, finished: bool) -> int:
        """Read the journal's complete lines added since the last call; return an open fd on it.

        If *finished*, an unfinished last line is read too (as a torn line is, by the journal's
        readers): nothing will finish it. Only a one-off gallery reads so, never read again.
        """
        try:
            fd = os.open(self._journal, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise InvalidRequestError("journal", f"{self._journal} does not exist") from None
        try:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) != self._file or stat.st_size < self._offset:
                self._reset((stat.st_dev, stat.st_ino))
            with os.fdopen(os.dup(fd), "rb") as stream:
                stream.seek(self._offset)
                at = self._offset
                for line, size in journal_lines(stream):
                    complete = (
                        line.endswith(b"\n")
                        if line is not None
                        else os.pread(fd, 1, at + size - 1) == b"\n"
                    )
                    if not complete and not finished:
                        break  # a line still being written is read next time
                    record = JournalRecord.from_line(line) if line is not None else None
                    if record is not None and record.state in _CODE:
                        self._add(record, at, size)
                    elif record is not None or unreadable(line):
                        # A state this gallery does not know (a newer journal) counts as unreadable.
                        self._skipped += 1
                    at += size
                self._offset = at
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _reset(self, file: tuple[int, int]) -> None:
        self._file = file
        self._offset = 0
        self._items.clear()
        self._pages.clear()
        self._invalid_at.clear()
        self._skipped = 0
        self._times = _Tally()
        self._cards.clear()
        self._written = None

    def _add(self, entry: JournalRecord, offset: int, length: int) -> None:
        key = _key_id(entry.key)
        old = self._items.get(key)
        started = old.started if old is not None else entry.time
        sure, unsure = _charged(entry)
        number = entry.position // self._page_size
        item = _Item(number, offset, length, _CODE[entry.state], sure, unsure, started)
        if old is not None:
            self._drop(key, old)
        invalid = self._invalid_at.get(entry.position)
        if invalid is not None and invalid != key:
            # The line at this position was invalid in an earlier run and reads well now.
            earlier = self._items.get(invalid)
            if earlier is not None:
                self._drop(invalid, earlier)
            del self._invalid_at[entry.position]
        if entry.state == "invalid":
            self._invalid_at[entry.position] = key
        self._items[key] = item
        page = self._pages.get(number)
        if page is None:
            page = self._pages[number] = _Page()
        page.keys.add(key)
        page.tally.add(item, 1)
        page.tally.saw(started, entry.time)
        page.dirty = True
        self._times.saw(started, entry.time)

    def _drop(self, key: int, item: _Item) -> None:
        page = self._pages[item.page]
        page.keys.discard(key)
        page.tally.add(item, -1)
        page.dirty = True
        del self._items[key]

    # --- writing the pages -----------------------------------------------------------------------

    def _write(self, fd: int, *, running: bool, now: float) -> None:
        title = self._title
        if title is None:
            title = f"nanobanana batch: {self._out_dir.resolve().name}"
        paged = any(number > 0 for number in self._pages)
        if self._written != (running, paged):
            for page in self._pages.values():
                page.dirty = True
        if not paged:
            first = self._pages.get(0)
            head = self._head(title, running=running, now=now)
            body = self._cards_of(fd, 0, running=running, now=now)
            if not body:
                body = ['<p class="empty">No items yet.</p>']
            text = "\n".join([*head, "<main>", *body, "</main>", "</body></html>", ""])
            _replace(self.path, text)
            if first is not None:
                first.dirty = False
            self._written = (running, paged)
            return
        numbers = sorted(self._pages)
        for at, number in enumerate(numbers):
            page = self._pages[number]
            if not (page.dirty or (running and page.tally.live())):
                continue
            low = number * self._page_size
            scope = f"page {number + 1}, #{low}-#{low + self._page_size - 1}"
            links = ['<a href="index.html">all pages</a>']
            if at > 0:
                links.append(f'<a href="{_page_name(numbers[at - 1] + 1)}" rel="prev">previous</a>')
            if at + 1 < len(numbers):
                links.append(f'<a href="{_page_name(numbers[at + 1] + 1)}" rel="next">next</a>')
            nav = f'<nav class="pages">{" · ".join(links)}</nav>'
            head = _header(
                page.tally,
                title=title,
                running=running,
                refresh=self._refresh,
                now=now,
                scope=scope,
                nav=nav,
                skipped=self._skipped,
            )
            body = self._cards_of(fd, number, running=running, now=now)
            text = "\n".join([*head, "<main>", *body, "</main>", "</body></html>", ""])
            # The page is clean only once written: a failed write is tried again next time.
            _replace(self.page_path(number + 1), text)
            page.dirty = False
        self._written = (running, paged)
        _replace(self.path, self._index(title, running=running, now=now))

    def _tally(self) -> _Tally:
        total = _Tally()
        for page in self._pages.values():
            total.merge(page.tally)
        total.first, total.last = self._times.first, self._times.last
        return total

    def _head(self, title: str, *, running: bool, now: float) -> list[str]:
        return _header(
            self._tally(),
            title=title,
            running=running,
            refresh=self._refresh,
            now=now,
            skipped=self._skipped,
        )

    def _index(self, title: str, *, running: bool, now: float) -> str:
        head = self._head(title, running=running, now=now)
        view = _RUNNING_VIEW if running else _FINAL_VIEW
        rows = []
        for number in sorted(self._pages):
            page = self._pages[number]
            low = number * self._page_size
            counts = page.tally.view_counts(running=running)
            parts = [
                f'<span class="{css}">{counts[css]} {_e(word)}</span>'
                for css, word in (
                    ("done", "done"),
                    ("failed", "failed"),
                    ("invalid", "invalid"),
                    ("uncertain", "uncertain"),
                    ("running", view["running"][1]),
                    ("unsent", "not sent"),
                )
                if counts[css]
            ]
            name = _page_name(number + 1)
            rows.append(
                f'<li><a href="{name}">page {number + 1}</a> '
                f'<span class="range">#{low}-#{low + self._page_size - 1}</span> '
                f"{' '.join(parts)}</li>"
            )
        listing = f'<ol class="pagelist">{"".join(rows)}</ol>'
        return "\n".join([*head, "<main>", listing, "</main>", "</body></html>", ""])

    def _cards_of(self, fd: int, number: int, *, running: bool, now: float) -> list[str]:
        """Render the cards of page *number*, reusing the cards of recent renders that hold."""
        page = self._pages.get(number)
        if page is None:
            return []
        entries: list[tuple[JournalRecord, float]] = []
        for key in page.keys:
            item = self._items[key]
            entry = _entry(os.pread(fd, item.length, item.offset))
            if entry is not None:
                entries.append((entry, item.started))
        entries.sort(key=lambda pair: (pair[0].position, pair[1], pair[0].key))
        cache = self._cards.pop(number, {})
        fresh: dict[str, tuple[tuple[object, ...], str]] = {}
        cards = []
        for entry, started in entries:
            files = _file_tokens(self._out_dir, entry.files) if entry.state == "succeeded" else ()
            live = running and _RUNNING_VIEW[entry.state][0] == "running"
            signature = (entry, started, files, running)
            cached = cache.get(entry.key)
            if cached is not None and cached[0] == signature and not live:
                card = cached[1]
            else:
                card = _card(entry, started, files, self._out_dir, running=running, now=now)
            fresh[entry.key] = (signature, card)
            cards.append(card)
        self._cards[number] = fresh
        while len(self._cards) > _CACHED_PAGES:
            self._cards.popitem(last=False)
        return cards


def _page_name(number: int) -> str:
    return f"page-{number:04d}.html"


def write_gallery(
    out_dir: str | os.PathLike[str],
    journal: str | os.PathLike[str] | None = None,
    *,
    running: bool = False,
    refresh: float = DEFAULT_GALLERY_REFRESH,
    title: str | None = None,
    page_size: int = DEFAULT_GALLERY_PAGE_SIZE,
) -> Path:
    """Render the batch in *out_dir* as ``out_dir/index.html`` from its journal; return its path.

    The page shows every journaled item in input order (images as lazily loaded thumbnails, failed,
    invalid and uncertain items with their reason) under a summary of counts, credits and time.
    Beyond *page_size* items, ``index.html`` summarises the pages and links to them (see `Gallery`).
    Every file is written to a temporary file and moved into place, so it can be opened while the
    batch runs. To keep a gallery up to date during a run, hold a `Gallery` instead (it reads and
    rewrites only what changed).

    Journal lines that hold no record (torn, garbage, nested too deep, over the journal's line
    limit) are skipped and counted: the page says how many, and a warning on the
    ``nanobanana_async`` logger too. Unless *running*, that includes an unfinished last line (a
    record torn by a crash); while running, that line is taken for a record being written.

    Args:
        out_dir: The batch's output folder (image paths in the page are relative to it).
        journal: The batch's journal; default ``out_dir/journal.jsonl``.
        running: Whether the batch still runs: the page then reloads itself every *refresh*
            seconds, and items in flight show as running rather than unfinished or uncertain.
        refresh: Seconds between reloads while running.
        title: The page's heading; default the folder's name.
        page_size: Items per page.

    Raises:
        InvalidRequestError: If the journal does not exist, *refresh* is not positive or
            *page_size* below 1.
        OSError: If a page cannot be written.
    """
    gallery = Gallery(out_dir, journal, refresh=refresh, title=title, page_size=page_size)
    # A finished journal's unfinished last line (torn by a crash) is read and counted; while the
    # batch runs, it may be a record being written: it is left for the next write.
    page = gallery.write(running=running, finished=not running)
    if gallery.skipped:
        logger.warning(
            "journal %s: the gallery skipped %d unreadable line%s (not a record)",
            gallery.journal,
            gallery.skipped,
            "" if gallery.skipped == 1 else "s",
        )
    return page
