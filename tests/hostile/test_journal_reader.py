"""The journal reader never crashes (issue 19): deep nesting, torn lines, binary garbage and very
long lines are skipped with a warning and counted, by resume, `--dry-run` and `gallery` alike."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from nanobanana_async._journal import (
    MAX_LINE_BYTES,
    Journal,
    JournalRecord,
    read_journal,
    scan_journal,
)
from nanobanana_async.gallery import Gallery, write_gallery
from nanobanana_async.testing import Emulator
from tests.cli._helpers import cli_env, err, is_png, json_lines, out, run_cli

pytestmark = pytest.mark.anyio

GOOD = JournalRecord(key="k-good", position=0, state="failed", prompt="a cat", error="refused")


def hostile_lines() -> list[bytes]:
    """Lines no reader may choke on; each counts as one skipped line."""
    return [
        b"[" * 200_000 + b"\n",  # nesting deep enough for RecursionError
        b'{"key": "k-torn", "posi\n',  # torn by a crash
        bytes(range(10)) + bytes(range(11, 256)) + b"\n",  # binary garbage
        b'{"key":"' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n',  # longer than any record
        b'{"key":"k-sur","position":1,"state":"failed","prompt":"\\ud800"}\n',  # lone surrogate
    ]


def write_hostile_journal(path: Path, good: bytes = GOOD.to_line()) -> None:
    """Write a journal of the hostile lines around one good record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = hostile_lines()
    path.write_bytes(b"".join(lines[:2]) + good + b"".join(lines[2:]))


def test_the_reader_skips_and_counts_every_unreadable_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`scan_journal` keeps the good record, counts 5 skipped lines, and logs one warning."""
    journal = tmp_path / "journal.jsonl"
    write_hostile_journal(journal)
    with caplog.at_level(logging.WARNING, logger="nanobanana_async"):
        found = scan_journal(journal)
    assert found.records == {"k-good": GOOD}
    assert found.skipped == len(hostile_lines())
    assert read_journal(journal) == {"k-good": GOOD}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 5 unreadable lines" in message for message in warnings), warnings


def test_from_line_never_raises() -> None:
    """Every hostile line reads as None, never as an exception."""
    for line in hostile_lines():
        assert JournalRecord.from_line(line) is None


def test_opening_a_journal_whose_torn_tail_is_a_long_line_cuts_all_of_it(tmp_path: Path) -> None:
    """A torn last line longer than `MAX_LINE_BYTES` is cut whole: the file ends at a newline."""
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(GOOD.to_line() + b'{"key":"' + b"y" * (2 * MAX_LINE_BYTES + 5))
    opened = Journal.open(journal)
    opened.close()
    assert journal.read_bytes() == GOOD.to_line()
    assert opened.index == {"k-good": GOOD}


async def test_dry_run_resume_and_gallery_survive_a_hostile_journal(tmp_path: Path) -> None:
    """`--dry-run`, a resumed batch and `gallery` run over the hostile journal, warn and count."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n", encoding="utf-8")
    folder = tmp_path / "out"
    write_hostile_journal(folder / "journal.jsonl")
    async with Emulator(speed=1000, image_downscale=8) as emu:
        env = cli_env(emu)
        plan = await run_cli("batch", str(prompts), "--out", str(folder), "--dry-run", env=env)
        plan_json = await run_cli(
            "batch", str(prompts), "--out", str(folder), "--dry-run", "--json", env=env
        )
        run = await run_cli("batch", str(prompts), "--out", str(folder), env=env)
        gallery = await run_cli("gallery", str(folder), env=env)
    for result in (plan, plan_json, run, gallery):
        assert "Traceback" not in err(result), err(result)
        assert "RecursionError" not in err(result) + out(result)
    assert plan.returncode == 0, err(plan)
    assert "5 unreadable lines skipped" in out(plan)
    assert "skipped 5 unreadable lines" in err(plan)
    (data,) = json_lines(out(plan_json))
    assert data["journal_lines_skipped"] == 5
    assert data["to_send"] == 2
    assert run.returncode == 0, out(run) + err(run)
    images = list(folder.glob("*.png"))
    assert len(images) == 2
    assert all(is_png(path) for path in images)
    assert "skipped 5 unreadable lines" in err(run)
    assert gallery.returncode == 0, err(gallery)
    assert "warning: " in err(gallery)
    assert "skipped 5 unreadable lines" in err(gallery), err(gallery)
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert "5 unreadable journal lines skipped" in page
    # The good record (key k-good) and the run's own records are all readable afterwards.
    records = [
        json.loads(line)
        for line in (folder / "journal.jsonl").read_bytes().splitlines()
        if line.startswith(b'{"key":"') and len(line) < 10_000 and b"k-sur" not in line
    ]
    ended = {r["key"]: r["state"] for r in records if r["key"] != "k-good"}
    assert sorted(ended.values()) == ["succeeded", "succeeded"]


def test_the_gallery_counts_the_lines_it_skips_and_waits_for_a_long_line_being_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`Gallery` counts each unreadable line once, a long unfinished last line once done."""
    journal = tmp_path / "journal.jsonl"
    write_hostile_journal(journal)
    with journal.open("ab") as stream:
        stream.write(b'{"key":"' + b"z" * (MAX_LINE_BYTES + 3))  # still being written
    gallery = Gallery(tmp_path)
    with caplog.at_level(logging.WARNING, logger="nanobanana_async"):
        page = gallery.write()
    assert gallery.skipped == len(hostile_lines())
    assert "5 unreadable journal lines skipped" in page.read_text(encoding="utf-8")
    assert "a cat" in page.read_text(encoding="utf-8")
    assert not caplog.records  # a batch's live gallery stays quiet: the batch warns itself
    with journal.open("ab") as stream:
        stream.write(b'"}\n' + GOOD.to_line())
    gallery.write()
    assert gallery.skipped == len(hostile_lines()) + 1
    with caplog.at_level(logging.WARNING, logger="nanobanana_async"):
        write_gallery(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 6 unreadable lines" in message for message in warnings), warnings


def test_write_gallery_counts_and_warns_a_torn_last_line_a_live_gallery_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A finished journal's torn last line is counted and warned by `write_gallery` only."""
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(GOOD.to_line() + b'{"key": "k-torn", "position": 1, "sta')  # a crash
    live = Gallery(tmp_path)
    with caplog.at_level(logging.WARNING, logger="nanobanana_async"):
        live.write(running=True)
        live.write()
        assert live.skipped == 0  # a live batch's gallery waits: the line may be being written
        assert not caplog.records
        write_gallery(tmp_path, running=True)
        assert not caplog.records
        page = write_gallery(tmp_path)
    text = page.read_text(encoding="utf-8")
    assert "1 unreadable journal line skipped" in text
    assert "a cat" in text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 1 unreadable line " in message for message in warnings), warnings
    assert scan_journal(journal).skipped == 1  # the same count as the journal's own reader
