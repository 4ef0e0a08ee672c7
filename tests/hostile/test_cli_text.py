"""Hostile server text through the command line (issue 19): terminal escapes never reach the
terminal raw, in plain batch lines, the live display and `status`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.cli._helpers import COMMAND, cli_env, err, out, run_cli, run_on_terminal

from ._server import hostile_server

pytestmark = pytest.mark.anyio

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals")

#: An OSC that retitles the window, a screen clear, blinking red, a C1 CSI, a bidi override, a bell.
HOSTILE_TEXT = "\x1b]0;pwned\x07\x1b[2J\x1b[5;31mred \x9b2J \u202eevil\u202c\x07 done"
#: What no output may hold raw: the escape, the C1 CSI, the bidi override, the bell.
RAW = ("\x1b]0;", "\x1b[2J", "\x1b[5;31m", "\x9b", "\u202e", "\x07")


def assert_no_raw_controls(text: str) -> None:
    """Assert that none of the hostile control sequences shows raw in *text*."""
    for sequence in RAW:
        assert sequence not in text, (sequence, text[-2000:])


def hostile_env(server_url: str, key: str) -> dict[str, str]:
    """Return the command's environment for the hostile server."""
    return cli_env(NANOBANANA_API_KEY=key, NANOBANANA_BASE_URL=server_url)


async def test_plain_batch_lines_show_server_escapes_as_text(tmp_path: Path) -> None:
    """A failure reason full of escapes is printed escaped (visible), never raw, in batch output."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("fail this one\n", encoding="utf-8")
    async with hostile_server() as server:
        server.failure_reason = HOSTILE_TEXT
        server.failure_error = HOSTILE_TEXT
        result = await run_cli(
            "batch",
            str(prompts),
            "--out",
            str(tmp_path / "out"),
            env=hostile_env(server.base_url, server.api_key),
        )
    text = out(result) + err(result)
    assert result.returncode == 1, text
    assert_no_raw_controls(text)
    assert "\\u001b]0;pwned" in out(result)


async def test_status_shows_server_escapes_as_text() -> None:
    """`status` of a failed task prints its hostile reason escaped; `--json` stays valid JSON."""
    async with hostile_server() as server:
        server.failure_reason = HOSTILE_TEXT
        server.failure_error = HOSTILE_TEXT
        server.tasks["3-hostile-9"] = {"prompt": "fail", "polls": 5, "flipped": False}
        env = hostile_env(server.base_url, server.api_key)
        plain = await run_cli("status", "3-hostile-9", env=env)
        as_json = await run_cli("status", "3-hostile-9", "--json", env=env)
    assert plain.returncode == 1
    assert_no_raw_controls(out(plain) + err(plain))
    assert "failure_reason: \\u001b]0;pwned" in out(plain)
    assert_no_raw_controls(out(as_json))
    (line,) = out(as_json).splitlines()
    assert json.loads(line)["failure_reason"] == HOSTILE_TEXT


@posix_only
async def test_the_live_display_shows_server_escapes_as_text(tmp_path: Path) -> None:
    """On a terminal (rich's live display) the hostile reason is escaped too."""
    pytest.importorskip("rich")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("fail this one\nfail that one\n", encoding="utf-8")
    async with hostile_server() as server:
        server.failure_reason = HOSTILE_TEXT
        server.failure_error = HOSTILE_TEXT
        code, text = await run_on_terminal(
            [*COMMAND, "batch", str(prompts), "--out", str(tmp_path / "out")],
            hostile_env(server.base_url, server.api_key),
        )
    assert code == 1, text
    assert "━" in text  # the live display ran
    assert_no_raw_controls(text)
    assert "\\u001b]0;pwned" in text
