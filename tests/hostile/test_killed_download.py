"""Leftovers (issue 19.3): a batch SIGKILLed mid-download leaves the downloader's own ``.part``
file, and the resumed run removes it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.cli._helpers import COMMAND, cli_env, err, is_png, out, run_cli

from ._server import hostile_server

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

#: How the downloader names its partial file: ``.<final name>.<8 hex>.part``.
PART = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{8}\.part")


def parts_in(folder: Path) -> list[Path]:
    """Return the ``.part`` files in *folder* (none if it does not exist yet)."""
    return sorted(folder.glob(".*.part")) if folder.is_dir() else []


async def wait_for_part(folder: Path, *, max_checks: int = 6000) -> Path:
    """Wait (in 5 ms steps, boundedly) until *folder* holds a ``.part`` file; return it."""
    for _ in range(max_checks):
        found = parts_in(folder)
        if found:
            return found[0]
        await anyio.sleep(0.005)
    raise AssertionError(f"no .part file appeared in {folder}")


async def test_a_resumed_batch_removes_the_part_file_a_sigkill_mid_download_left(
    tmp_path: Path,
) -> None:
    """A batch killed while an image streams leaves a real ``.part`` file; the rerun removes it."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a banana cat\n", encoding="utf-8")
    folder = tmp_path / "out"
    async with hostile_server() as server:
        server.file_plan = ["stall-mid-body"]
        env = cli_env(NANOBANANA_API_KEY=server.api_key, NANOBANANA_BASE_URL=server.base_url)
        argv = [*COMMAND, "batch", str(prompts), "--out", str(folder)]
        async with await anyio.open_process(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as killed:
            with anyio.fail_after(60):
                await server.stalled.wait()
                part = await wait_for_part(folder)
            killed.send_signal(signal.SIGKILL)
            with anyio.fail_after(60):
                assert await killed.wait() == -signal.SIGKILL
        # The file the downloader really made, as its kill left it.
        match = PART.fullmatch(part.name)
        assert match is not None, part.name
        assert part.exists()
        assert not (folder / match["target"]).exists()

        resumed = await run_cli("batch", str(prompts), "--out", str(folder), env=env)
    assert resumed.returncode == 0, out(resumed) + err(resumed)
    assert not part.exists()
    assert sorted(folder.glob("*.part")) == sorted(folder.glob(".*.part")) == []
    assert is_png(folder / match["target"])
    assert server.charged["a banana cat"] == 1  # the rerun attached to the task, never re-sent
