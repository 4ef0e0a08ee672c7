"""The gallery in pages, every input line accounted for, leftovers of a killed run, a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async._journal import JournalRecord
from nanobanana_async.testing import Emulator

from ._helpers import HOSTILE_PROMPT, cards, fast_client, parse_page


def cli_env(emu: Emulator) -> dict[str, str]:
    """An environment for the command: the emulator's key and URL, no proxy, fast polls."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONIOENCODING="utf-8",
        NANOBANANA_API_KEY=emu.api_key,
        NANOBANANA_BASE_URL=emu.base_url,
        NANOBANANA_POLL_SPEED="1000",
    )
    env.pop("http_proxy", None)
    env.pop("https_proxy", None)
    return env


async def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m nanobanana_async ARGS`` as a user would (the emulator keeps serving)."""
    with anyio.fail_after(timeout):
        return await anyio.run_process(
            [sys.executable, "-m", "nanobanana_async", *args], env=env, check=False
        )


def out(done: subprocess.CompletedProcess[bytes]) -> str:
    """The command's standard output."""
    return done.stdout.decode("utf-8")


def err(done: subprocess.CompletedProcess[bytes]) -> str:
    """The command's standard error."""
    return done.stderr.decode("utf-8")


def _journal(folder: Path, records: list[JournalRecord]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "journal.jsonl"
    with path.open("ab") as stream:
        for record in records:
            stream.write(record.to_line())
    return path


def _record(position: int, state: str = "failed", prompt: str = "") -> JournalRecord:
    return JournalRecord(
        key=f"key-{position}",
        position=position,
        state=state,
        prompt=prompt or f"prompt {position}",
        model="nano-banana",
        task_id=f"task-{position}",
        error="refused" if state == "failed" else None,
        time=1_700_000_000.0 + position,
    )


def test_a_large_gallery_is_paged_and_only_changed_pages_are_rewritten(tmp_path: Path) -> None:
    """Beyond a page of items, the index links pages, and a write rewrites only changed pages."""
    folder = tmp_path / "out"
    records = [_record(p, prompt=HOSTILE_PROMPT if p == 4 else "") for p in range(7)]
    _journal(folder, records)
    gallery = nb.gallery.Gallery(folder, page_size=3)
    gallery.write()
    index = parse_page(folder / "index.html")
    assert cards(index) == []
    links = [a.attrs["href"] for a in index.find("ol", "pagelist").find_all("a")]
    assert links == ["page-0001.html", "page-0002.html", "page-0003.html"]
    assert "7" in index.find("li", "failed").text()
    shown = []
    for number in (1, 2, 3):
        page = parse_page(gallery.page_path(number))
        assert page.find_all("script") == []
        shown += [int(card.attrs["id"].removeprefix("item-")) for card in cards(page)]
    assert shown == list(range(7))
    second = parse_page(gallery.page_path(2))
    assert HOSTILE_PROMPT in [card.find(cls="prompt").text() for card in cards(second)]

    before = {n: gallery.page_path(n).stat().st_ino for n in (1, 2, 3)}
    _journal(folder, [_record(4, state="unsent")])
    gallery.write()
    after = {n: gallery.page_path(n).stat().st_ino for n in (1, 2, 3)}
    assert after[1] == before[1]
    assert after[3] == before[3]
    assert after[2] != before[2]
    states = [card.attrs["data-state"] for card in cards(parse_page(gallery.page_path(2)))]
    assert states == ["failed", "unsent", "failed"]


def _requests(folder: Path) -> Path:
    lines = [
        json.dumps({"prompt": "a banana cat", "model": "nano-banana-fast"}),
        json.dumps({"prompt": ""}),
        json.dumps({"prompt": "x", "aspect_ratio": "7:7"}),
        json.dumps({"prompt": "x", "image_size": "9K"}),
        json.dumps({"prompt": "x", "aspect_ratio": "0:0"}),
        "not json at all",
        json.dumps(["a list"]),
        json.dumps({"prompt": HOSTILE_PROMPT, "image_size": "9K"}),
    ]
    path = folder / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.anyio
async def test_the_gallery_counts_invalid_lines_as_the_cli_does(tmp_path: Path) -> None:
    """With 1 valid and 7 invalid lines, the gallery shows 8 items, 7 invalid, as the CLI counts."""
    source = _requests(tmp_path)
    folder = tmp_path / "out"
    async with Emulator(speed=1000, image_downscale=8) as emu:
        done = await run_cli("batch", str(source), "--out", str(folder), "--json", env=cli_env(emu))
    summary = [json.loads(line) for line in out(done).splitlines() if '"summary"' in line][-1]
    assert (summary["succeeded"], summary["failed"]) == (1, 7), err(done)
    page = parse_page(folder / "index.html")
    states = [card.attrs["data-state"] for card in cards(page)]
    assert states == ["done"] + ["invalid"] * 7
    assert page.find("li", "done").find("b").text() == str(summary["succeeded"])
    assert page.find("li", "failed").find("b").text() == str(summary["failed"])
    assert "8 items" in page.find("p", "when").text()
    assert all(card.find(cls="reason").text() for card in cards(page)[1:])
    assert page.find_all("script") == []


@pytest.mark.anyio
async def test_a_resumed_batch_removes_the_partial_downloads_a_kill_left(tmp_path: Path) -> None:
    """A rerun removes the ``.part`` and ``.tmp`` files named as ours, and no file of the user's."""
    folder = tmp_path / "out"
    folder.mkdir()
    ours = [
        ".00000-a-banana-cat-0.png.0a1b2c3d.part",
        ".00012-banana-city-1.8f9e7d6c.part",
        ".index.html.4242.0123456789ab.tmp",
    ]
    theirs = ["notes.part", ".my-download.part", "00000-a-banana-cat-0.png.part", ".x.tmp"]
    for name in ours + theirs:
        (folder / name).write_bytes(b"partial")
    async with Emulator(speed=1000, image_downscale=8) as emu, fast_client(emu) as client:
        summary = await nb.run_batch(client, ["a banana cat"], folder)
    assert summary.succeeded == 1
    left = {path.name for path in folder.iterdir()}
    assert not left & set(ours)
    assert set(theirs) <= left


@contextlib.contextmanager
def _tiny_filesystem(where: Path) -> Iterator[Path]:
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@pytest.mark.anyio
@pytest.mark.skipif(shutil.which("mount") is None or os.geteuid() != 0, reason="needs root")
async def test_a_gallery_write_on_a_full_disk_is_one_clear_line(tmp_path: Path) -> None:
    """On a full filesystem, the batch prints one line about the gallery, no traceback, and ends."""
    with _tiny_filesystem(tmp_path / "small") as small:
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as stream:
            while True:
                stream.write(b"\0" * 4096)
                stream.flush()
        journal = tmp_path / "journal.jsonl"
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a banana cat\nbanana city\n", encoding="utf-8")
        async with Emulator(speed=1000, image_downscale=8) as emu:
            done = await run_cli(
                "batch",
                str(prompts),
                "--out",
                str(small),
                "--journal",
                str(journal),
                env=cli_env(emu),
                timeout=120,
            )
        text = err(done)
        assert "Traceback" not in text
        lines = [line for line in text.splitlines() if "gallery" in line]
        assert len(lines) == 1, text
        assert "No space left on device" in lines[0]
        assert "the batch goes on" in lines[0]
        states = [json.loads(line)["state"] for line in journal.read_text().splitlines()]
        assert "running" in states
