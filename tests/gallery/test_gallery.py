"""The gallery page of a batch: its cards, escaping, counts, live rewrites and tolerance."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nanobanana_async as nb

from ._helpers import (
    DONE,
    FAILED,
    HOSTILE_PROMPT,
    UNCERTAIN,
    BatchRuns,
    cards,
    parse_page,
    run_batches,
)

S = nb.events.BatchItemStatus


@pytest.fixture
async def runs(tmp_path: Path) -> BatchRuns:
    """A real batch folder with three items done, one uncertain and one failed."""
    return await run_batches(tmp_path / "out")


def _png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


@pytest.mark.anyio
async def test_every_item_is_a_card_with_its_images_and_details(runs: BatchRuns) -> None:
    """Each item is one card, in input order, with its prompt, model, size, credits and task id."""
    page_path = nb.gallery.write_gallery(runs.folder)
    assert page_path == runs.folder / "index.html"
    page = parse_page(page_path)
    items = runs.failed.items
    assert [item.status for item in items] == [S.SUCCEEDED] * 3 + [S.UNCERTAIN, S.FAILED]
    found = cards(page)
    assert [card.find(cls="prompt").text() for card in found] == [item.prompt for item in items]
    assert [card.attrs["data-state"] for card in found] == [
        "done",
        "done",
        "done",
        "uncertain",
        "failed",
    ]
    requests = [*DONE, UNCERTAIN, FAILED]
    for card, item, request in zip(found, items, requests, strict=True):
        assert card.find(cls="model").text() == request.model
        if item.task_id is None:
            assert card.find_all(cls="task") == []
        else:
            assert card.find(cls="task").text() == f"task {item.task_id}"
    for card, item in zip(found[:3], items[:3], strict=True):
        images = card.find_all("img")
        assert [img.attrs["src"] for img in images] == [path.name for path in item.paths]
        for img, path in zip(images, item.paths, strict=True):
            width, height = _png_size(path)
            assert (img.attrs["width"], img.attrs["height"]) == (str(width), str(height))
            assert img.attrs["loading"] == "lazy"
            assert img.attrs["alt"] == item.prompt
            assert f"{width}\u00d7{height}" in card.find(cls="size").text()
        assert card.find(cls="credits").text() == f"{item.cost} credits"
        assert card.find_all(cls="reason") == []


@pytest.mark.anyio
async def test_failed_and_uncertain_cards_show_their_reason(runs: BatchRuns) -> None:
    """The failed card shows the service's reason; the uncertain one, why it may cost credits."""
    page = parse_page(nb.gallery.write_gallery(runs.folder))
    failed, uncertain = runs.failed.items[4], runs.uncertain.items[3]
    assert "output_moderation" in (failed.error or "")
    assert "may have reached the server" in (uncertain.error or "")
    by_state = {card.attrs["data-state"]: card for card in cards(page)[3:]}
    assert failed.error in by_state["failed"].find(cls="reason").text()
    assert by_state["failed"].find(cls="credits").text() == "refunded"
    assert by_state["failed"].find_all("img") == []
    assert uncertain.error in by_state["uncertain"].find(cls="reason").text()
    assert by_state["uncertain"].find(cls="credits").text() == f"up to {uncertain.cost} credits"


@pytest.mark.anyio
async def test_a_hostile_prompt_is_text_not_markup(runs: BatchRuns) -> None:
    """A prompt full of tags and quotes adds no element or attribute to the page: it stays text."""
    page = parse_page(nb.gallery.write_gallery(runs.folder))
    assert page.find_all("script") == []
    assert len(page.find_all("img")) == 3  # only the thumbnails, not the prompt's <img>
    assert len(page.find_all("b")) == len(page.find(cls="stats").find_all("b"))
    hostile = cards(page)[1]
    assert hostile.find(cls="prompt").text() == HOSTILE_PROMPT
    img = hostile.find("img")
    assert img.attrs["alt"] == HOSTILE_PROMPT
    assert "onerror" not in img.attrs
    assert page.find("title").text().startswith("nanobanana batch: ")


@pytest.mark.anyio
async def test_the_header_counts_items_credits_and_time(runs: BatchRuns) -> None:
    """The summary header has the done/failed/uncertain counts and credits the batch reports."""
    page = parse_page(nb.gallery.write_gallery(runs.folder))
    stats = page.find(cls="stats")
    summary = runs.failed
    counts = {
        name: int(stats.find("li", name).find("b").text())
        for name in ("done", "failed", "uncertain")
    }
    assert counts == {
        "done": summary.succeeded,
        "failed": summary.failed,
        "uncertain": summary.uncertain,
    }
    charged = sum(item.cost or 0 for item in summary.items if item.status is S.SUCCEEDED)
    maybe = sum(item.cost or 0 for item in summary.items if item.status is S.UNCERTAIN)
    credits = stats.find("li", "credits")
    assert int(credits.find("b").text()) == charged
    assert credits.text().endswith(f"+ up to {maybe} uncertain")
    assert charged + maybe == summary.credits_total
    assert stats.find("li", "time").text().endswith(" elapsed")
    assert all(meta.attrs.get("http-equiv") != "refresh" for meta in page.find_all("meta"))
    assert "5 items" in page.find(cls="when").text()


@pytest.mark.anyio
async def test_a_page_written_while_running_reloads_and_shows_running_items(
    tmp_path: Path,
) -> None:
    """Written during the run, the page refreshes itself and shows items in flight as running."""
    folder = tmp_path / "live"
    gallery = nb.gallery.Gallery(folder, refresh=2.5)
    snapshots: list[str] = []

    def on_event(event: nb.events.BatchEvent) -> None:
        if event.kind is nb.events.BatchEventKind.SUBMITTED and event.position == 0:
            snapshots.append(gallery.write(running=True).read_text(encoding="utf-8"))

    await run_batches(folder, on_event=on_event)
    assert len(snapshots) == 1
    live = tmp_path / "live.html"
    live.write_text(snapshots[0], encoding="utf-8")
    page = parse_page(live)
    refresh = [meta for meta in page.find_all("meta") if meta.attrs.get("http-equiv") == "refresh"]
    assert [meta.attrs["content"] for meta in refresh] == ["3"]
    assert cards(page)[0].attrs["data-state"] == "running"
    assert "running" in page.find(cls="when").text()

    final = parse_page(gallery.write())
    assert all(meta.attrs.get("http-equiv") != "refresh" for meta in final.find_all("meta"))
    assert [card.attrs["data-state"] for card in cards(final)][:3] == ["done"] * 3


@pytest.mark.anyio
async def test_the_page_is_replaced_whole_and_no_temporary_file_stays(runs: BatchRuns) -> None:
    """A reader of the old page keeps a complete page; the rewrite leaves no temporary file."""
    gallery = nb.gallery.Gallery(runs.folder)
    path = gallery.write(running=True)
    with path.open("rb") as reader:
        gallery.write()
        old = reader.read().decode()
    assert old.endswith("</html>\n")
    assert 'http-equiv="refresh"' in old
    assert 'http-equiv="refresh"' not in path.read_text(encoding="utf-8")
    leftovers = sorted(p.name for p in runs.folder.iterdir() if p.suffix not in (".png",))
    assert leftovers == ["index.html", "journal.jsonl"]


@pytest.mark.anyio
async def test_reading_the_journal_as_it_grows_gives_the_same_page(runs: BatchRuns) -> None:
    """A Gallery fed the journal line by line (torn lines too) renders what a fresh one does."""
    lines = runs.journal.read_bytes().splitlines(keepends=True)
    growing = runs.folder / "growing.jsonl"
    gallery = nb.gallery.Gallery(runs.folder, growing, title="same")
    with growing.open("wb") as stream:
        for line in lines:
            stream.write(line[:5])  # a line still being written
            stream.flush()
            gallery.write(running=True)
            stream.write(line[5:])
            stream.flush()
            gallery.write(running=True)
    incremental = gallery.write().read_text(encoding="utf-8")
    fresh = nb.gallery.write_gallery(runs.folder, runs.journal, title="same").read_text(
        encoding="utf-8"
    )
    assert incremental == fresh
    # A journal replaced by a shorter one is read again from its start.
    growing.write_bytes(b"".join(lines[:3]))
    keys = {json.loads(line)["key"] for line in lines[:3]}
    assert len(cards(parse_page(gallery.write()))) == len(keys)


@pytest.mark.anyio
async def test_a_missing_image_is_reported_instead_of_a_broken_thumbnail(runs: BatchRuns) -> None:
    """When an image file is gone, its card says so and has no img pointing at nothing."""
    gallery = nb.gallery.Gallery(runs.folder)
    gallery.write()
    gone = runs.failed.items[0].paths[0]
    gone.unlink()
    card = cards(parse_page(gallery.write()))[0]
    assert card.find_all("img") == []
    assert card.find(cls="reason").text() == f"image file missing: {gone.name}"


def test_unreadable_journal_lines_are_skipped(tmp_path: Path) -> None:
    """Garbled, wrongly typed or unknown-state lines are skipped, as the batch skips them."""
    good = {"key": "k1", "position": 0, "state": "failed", "prompt": "fine", "error": "boom"}
    lines = [
        b"not json\n",
        b"[1, 2]\n",
        json.dumps({"key": "k2", "position": "zero", "state": "failed"}).encode() + b"\n",
        json.dumps({"key": "k3", "position": 1, "state": "exploded"}).encode() + b"\n",
        json.dumps({"key": "k4", "position": True, "state": "failed"}).encode() + b"\n",
        json.dumps({**good, "key": "k6", "cost": "many", "files": "x.png"}).encode() + b"\n",
        json.dumps(good).encode() + b"\n",
        b'{"key": "k5", "position": 2, "sta',
    ]
    (tmp_path / "journal.jsonl").write_bytes(b"".join(lines))
    page = parse_page(nb.gallery.write_gallery(tmp_path))
    (card,) = cards(page)
    assert card.find(cls="prompt").text() == "fine"
    assert card.find(cls="reason").text() == "boom"


def test_every_journal_state_has_a_gallery_code_and_view() -> None:
    """Each state a journal record may hold has a gallery code and a view, running or not."""
    from nanobanana_async._gallery import _CODE, _FINAL_VIEW, _RUNNING_VIEW
    from nanobanana_async._journal import STATES

    assert set(_CODE) == set(STATES)
    assert set(_RUNNING_VIEW) == set(STATES)
    assert set(_FINAL_VIEW) == set(STATES)


def test_a_record_of_a_state_the_gallery_does_not_know_is_skipped_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record whose state the journal accepts but the gallery lacks is counted as skipped."""
    from nanobanana_async import _journal

    monkeypatch.setattr(_journal, "STATES", _journal.STATES | {"queued"})
    good = {"key": "k1", "position": 0, "state": "failed", "prompt": "fine", "error": "boom"}
    newer = {"key": "k2", "position": 1, "state": "queued", "prompt": "later"}
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in (good, newer)))
    assert _journal.JournalRecord.from_line(journal.read_bytes().splitlines()[1]) is not None
    gallery = nb.gallery.Gallery(tmp_path)
    page = gallery.write()
    assert gallery.skipped == 1
    (card,) = cards(parse_page(page))
    assert card.find(cls="prompt").text() == "fine"
    assert "1 unreadable journal line skipped" in page.read_text(encoding="utf-8")


def test_a_missing_journal_or_a_bad_refresh_is_a_clear_error(tmp_path: Path) -> None:
    """Rendering without a journal, or with a refresh that is not positive, names the field."""
    with pytest.raises(nb.InvalidRequestError, match="journal") as missing:
        nb.gallery.write_gallery(tmp_path)
    assert str(tmp_path / "journal.jsonl") in str(missing.value)
    assert not (tmp_path / "index.html").exists()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(nb.InvalidRequestError, match="refresh"):
            nb.gallery.Gallery(tmp_path, refresh=bad)


def test_image_sizes_are_read_from_jpeg_gif_and_webp_headers(tmp_path: Path) -> None:
    """The width and height of JPEG, GIF and WebP images come from their headers."""
    jpeg = (
        b"\xff\xd8"
        + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + b"\xff\xc0\x00\x11\x08"
        + struct.pack(">HH", 300, 400)
        + b"\x03" * 10
    )
    gif = b"GIF89a" + struct.pack("<HH", 70, 20) + b"\x00" * 8
    vp8x = b"VP8X" + b"\x0a\x00\x00\x00" + b"\x00" * 4
    webp = b"RIFF\x00\x00\x00\x00WEBP" + vp8x + (639).to_bytes(3, "little")
    webp += (47).to_bytes(3, "little")
    files = {"a.jpg": (jpeg, (400, 300)), "b.gif": (gif, (70, 20)), "c.webp": (webp, (640, 48))}
    records = []
    for n, (name, (data, _)) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        records.append({"key": name, "position": n, "state": "succeeded", "files": [name]})
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    images = parse_page(nb.gallery.write_gallery(tmp_path)).find_all("img")
    assert [(img.attrs["width"], img.attrs["height"]) for img in images] == [
        (str(w), str(h)) for _, (w, h) in files.values()
    ]


# Text made of markup fragments and any other printable characters.
_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["<b>", "</p>", "<script>", "&amp;", "&lt", "&", "<", ">", '"', "'", "="]),
        st.characters(blacklist_categories=("Cs", "Cc")),
    ),
    max_size=20,
).map("".join)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=_TEXT, error=_TEXT.filter(bool), task_id=_TEXT.filter(bool))
def test_any_text_round_trips_through_the_page(prompt: str, error: str, task_id: str) -> None:
    """Whatever a prompt, reason or task id holds, the page shows exactly that text."""
    record = {
        "key": "k",
        "position": 0,
        "state": "failed",
        "prompt": prompt,
        "error": error,
        "task_id": task_id,
    }
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "journal.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
        page = parse_page(nb.gallery.write_gallery(folder))
        names = sorted(os.listdir(folder))
    (card,) = cards(page)
    assert card.find(cls="prompt").text() == prompt
    assert card.find(cls="reason").text() == error
    assert card.find(cls="task").text() == f"task {task_id}"
    assert names == ["index.html", "journal.jsonl"]
