"""Helpers for the gallery tests: a real batch with every kind of outcome, and a tiny HTML tree."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import attrs

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

#: A prompt that would run a script, break out of an attribute and load an image if not escaped.
HOSTILE_PROMPT = (
    '<script>window.pwned = "script"</script> & "quoted" \'single\' '
    "<img src=x onerror=\"window.pwned = 'onerror'\"> </p></article><b>bold?</b>"
)
DONE = (
    nb.GenerationRequest(prompt="a banana cat", model="nano-banana-fast", aspect_ratio="4:3"),
    nb.GenerationRequest(prompt=HOSTILE_PROMPT, model="nano-banana"),
    nb.GenerationRequest(prompt="banana city", model="nano-banana-pro", aspect_ratio="3:4"),
)
UNCERTAIN = nb.GenerationRequest(prompt="an answer lost on the way", model="nano-banana")
FAILED = nb.GenerationRequest(prompt="a prompt the moderation refuses", model="nano-banana-pro")


@attrs.frozen
class BatchRuns:
    """The three runs that build one output folder: all done, one uncertain, one failed."""

    folder: Path
    done: nb.events.BatchSummary
    uncertain: nb.events.BatchSummary
    failed: nb.events.BatchSummary

    @property
    def journal(self) -> Path:
        """The journal all three runs shared."""
        return self.folder / "journal.jsonl"


def fast_client(emu: Emulator, **options: Any) -> nb.Client:
    """Return a client for *emu* that polls at the emulator's speed and never sleeps in retries."""
    return nb.Client(
        emu.api_key,
        base_url=emu.base_url,
        poll=nb.PollPolicy(speed=1000),
        retry=nb.RetryPolicy(sleep=False),
        **options,
    )


async def run_batches(
    folder: Path, on_event: Callable[[nb.events.BatchEvent], None] | None = None
) -> BatchRuns:
    """Run real batches into *folder*: three items done, then one uncertain, then one failed.

    Each run resumes the same journal (the earlier items are not sent again), as a user's reruns
    would; the failing task comes from a second emulator that fails every task.
    """
    async with Emulator(speed=1000, image_downscale=8) as emu:
        async with fast_client(emu) as client:
            done = await nb.run_batch(client, DONE, folder, on_event=on_event, gallery=False)
            emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
            uncertain = await nb.run_batch(client, [*DONE, UNCERTAIN], folder, gallery=False)
    async with Emulator(
        speed=1000, image_downscale=8, failure_rate=1.0, failure_reasons=["output_moderation"]
    ) as emu:
        async with fast_client(emu) as client:
            failed = await nb.run_batch(client, [*DONE, UNCERTAIN, FAILED], folder, gallery=False)
    return BatchRuns(folder, done, uncertain, failed)


def journal_records(path: Path) -> list[dict[str, Any]]:
    """Return every record of the journal at *path*, in order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- a tiny HTML tree --------------------------------------------------------------------------

_VOID = frozenset({"meta", "img", "link", "br", "hr", "input", "source", "wbr"})


@attrs.define(eq=False)
class Node:
    """One element of a parsed page."""

    tag: str
    attrs: dict[str, str | None]
    parent: Node | None = None
    children: list[Node | str] = attrs.Factory(list)

    def classes(self) -> set[str]:
        """The element's CSS classes."""
        return set((self.attrs.get("class") or "").split())

    def walk(self) -> Iterator[Node]:
        """This element and every element inside it, in document order."""
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        """Every element inside (or equal to) this one with the tag and class given."""
        return [
            node
            for node in self.walk()
            if (tag is None or node.tag == tag) and (cls is None or cls in node.classes())
        ]

    def find(self, tag: str | None = None, cls: str | None = None) -> Node:
        """The one element matching, failing the test if there is not exactly one."""
        found = self.find_all(tag, cls)
        assert len(found) == 1, (tag, cls, len(found))
        return found[0]

    def text(self) -> str:
        """The text inside, entities decoded."""
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attributes), self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, dict(attributes), self.current))

    def handle_endtag(self, tag: str) -> None:
        assert tag not in _VOID, f"end tag of void element {tag}"
        assert self.current.tag == tag, f"</{tag}> closes <{self.current.tag}>"
        assert self.current.parent is not None
        self.current = self.current.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_page(path: Path) -> Node:
    """Parse the page at *path* into a tree, checking every element is closed where it opened."""
    builder = _TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    assert builder.current is builder.root, "unclosed elements at the end of the page"
    return builder.root


def cards(page: Node) -> list[Node]:
    """The page's item cards, in page order."""
    return page.find_all("article", "card")


# --- PNG decoding (for the screenshot) ---------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """Return (width, height, bytes per pixel, raw pixel rows) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat, header = 8, [], b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        at += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8
    assert colour in (2, 6)
    assert interlace == 0
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = bytearray(stride * height)
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else b if pb <= pc else c
                row[i] = (row[i] + predictor) & 0xFF
        else:
            assert kind == 0, f"unknown PNG filter {kind}"
        out[y * stride : (y + 1) * stride] = row
        previous = row
    return width, height, bpp, bytes(out)
