"""A newcomer's first hour (issue 11): local checks before any credit, one-line errors, dry runs,
the emulator's settings and ledger, and the demo's honesty."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from nanobanana_async.cli import build_parser, main
from nanobanana_async.testing import Emulator
from nanobanana_async.testing._png import render_png

from ._helpers import (
    COMMAND,
    cli_env,
    err,
    is_png,
    json_lines,
    out,
    run_cli,
    write_prompts,
)

pytestmark = pytest.mark.anyio

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
ROOT = Path(__file__).resolve().parents[2]


def one_line(text: str) -> str:
    """Return the only line of *text*, failing if it has more or none."""
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


# --- no credit spent before a local check --------------------------------------------------------


async def test_generate_to_a_path_under_a_plain_file_fails_before_the_create(
    tmp_path: Path,
) -> None:
    """`generate --out FILE/x.png` exits 2 with one line naming the file, and creates nothing."""
    (tmp_path / "some-file").write_text("not a folder", encoding="utf-8")
    async with Emulator(speed=1000, image_downscale=8) as emu:
        result = await run_cli(
            "generate", "a cat", "--out", str(tmp_path / "some-file" / "x.png"), env=cli_env(emu)
        )
        assert emu.ledger.creates_received == 0
    assert result.returncode == 2
    line = one_line(err(result))
    assert "some-file is a file, not a folder" in line
    assert "Traceback" not in err(result)


async def test_batch_destinations_that_cannot_be_written_are_one_line_usage_errors(
    tmp_path: Path,
) -> None:
    """`batch --out FILE` and `--journal DIR` exit 2 with one line each; nothing is sent."""
    prompts = write_prompts(tmp_path / "prompts.txt", 2)
    existing_file = tmp_path / "existing_file"
    existing_file.write_text("x", encoding="utf-8")
    folder = tmp_path / "somedir"
    folder.mkdir()
    async with Emulator(speed=1000, image_downscale=8) as emu:
        env = cli_env(emu)
        into_file = await run_cli("batch", str(prompts), "--out", str(existing_file), env=env)
        journal_dir = await run_cli(
            "batch", str(prompts), "--out", str(tmp_path / "out"), "--journal", str(folder),
            env=env,
        )  # fmt: skip
        assert emu.ledger.creates_received == 0
    assert into_file.returncode == 2
    assert "--out" in one_line(err(into_file))
    assert "existing_file is a file, not a folder" in err(into_file)
    assert journal_dir.returncode == 2
    assert "--journal" in one_line(err(journal_dir))
    assert "a folder is there, not a file" in err(journal_dir)
    assert not (tmp_path / "out").exists()


async def test_emulator_port_problems_are_one_line_usage_errors() -> None:
    """`emulator --port` out of range, or in use, exits 2 with one line naming the problem."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = await run_cli("emulator", "--port", str(port), env=cli_env())
    too_big = await run_cli("emulator", "--port", "99999", env=cli_env())
    assert in_use.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(err(in_use))
    assert too_big.returncode == 2
    assert "--port: must be 0 to 65535: '99999'" in one_line(err(too_big))


async def test_image_before_the_prompt_does_not_swallow_it(tmp_path: Path) -> None:
    """`generate --image ref.png "a prompt"` sends the prompt with one reference image."""
    reference = tmp_path / "ref.png"
    reference.write_bytes(render_png(16, 16, b"ref"))
    async with Emulator(speed=1000, image_downscale=8) as emu:
        result = await run_cli(
            "generate", "--image", str(reference), "a prompt", env=cli_env(emu), cwd=tmp_path
        )
        (create,) = [record.fields for record in emu.requests if record.endpoint == "create"]
    assert result.returncode == 0, err(result)
    assert create is not None
    assert create["prompt"] == "a prompt"
    assert create["mode"] == "image-to-image"
    assert create["imageFile"] == ["ref.png"]


async def test_a_misspelt_model_is_caught_locally_and_a_lower_case_size_is_normalised(
    tmp_path: Path,
) -> None:
    """`--model nano-banan` (or `Nano-Banana`) exits 2 suggesting the right name, sending
    nothing; `--image-size 1k` sends `1K`."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        typo = await run_cli("generate", "cat", "--model", "nano-banan", env=cli_env(emu))
        case = await run_cli("generate", "cat", "--model", "Nano-Banana-Fast", env=cli_env(emu))
        assert emu.ledger.creates_received == 0
        lower = await run_cli(
            "generate", "cat", "--image-size", "1k", "--model", "nano-banana-fast",
            env=cli_env(emu), cwd=tmp_path,
        )  # fmt: skip
        (create,) = [record.fields for record in emu.requests if record.endpoint == "create"]
    assert typo.returncode == 2
    assert "did you mean 'nano-banana'?" in one_line(err(typo))
    assert case.returncode == 2
    assert "did you mean 'nano-banana-fast'?" in one_line(err(case))
    assert lower.returncode == 0, err(lower)
    assert create is not None
    assert (create["imageSize"], create["model"]) == ("1K", "nano-banana-fast")


async def test_a_priced_model_is_sent_as_given(tmp_path: Path) -> None:
    """`--price` lets a model the command does not know reach the service (which judges it)."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        result = await run_cli(
            "generate", "cat", "--model", "nano-banana-9", "--price", "nano-banana-9=18",
            env=cli_env(emu), cwd=tmp_path,
        )  # fmt: skip
        (create,) = [record.fields for record in emu.requests if record.endpoint == "create"]
    assert create is not None
    assert create["model"] == "nano-banana-9"
    assert result.returncode == 1  # the emulator answers 400 for a model it does not know
    assert "HTTP 400" in one_line(err(result))


async def test_a_wrong_key_gives_one_problem_line_with_a_count(tmp_path: Path) -> None:
    """Twenty items refused for the same reason share one problem line that counts them."""
    prompts = write_prompts(tmp_path / "prompts.txt", 20)
    async with Emulator(speed=1000, image_downscale=8) as emu:
        env = cli_env(emu, NANOBANANA_API_KEY="wrong-key")
        result = await run_cli("batch", str(prompts), "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 1
    text = out(result)
    problems = text.split("\nproblems\n", 1)[1].splitlines()
    assert len(problems) == 1, text
    assert problems[0].startswith("  #0-#19 skipped (20 items): not sent: HTTP 401")


async def test_dry_run_counts_creates_and_credits_minus_the_journal(tmp_path: Path) -> None:
    """--dry-run checks every line, prices what is left to send, needs no key and sends nothing."""
    source = tmp_path / "requests.jsonl"
    first = [
        {"prompt": "a", "model": "nano-banana-fast"},
        {"prompt": "b", "model": "nano-banana-pro"},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in first), encoding="utf-8")
    folder = tmp_path / "out"
    async with Emulator(speed=1000, image_downscale=8) as emu:
        done = await run_cli("batch", str(source), "--out", str(folder), env=cli_env(emu))
        assert done.returncode == 0, err(done)
        more = [{"prompt": "c"}, {"prompt": "d", "image_size": "2k"}, {"prompt": "e", "model": 3}]
        with source.open("a", encoding="utf-8") as stream:
            stream.writelines(json.dumps(line) + "\n" for line in more)
        files_before = sorted(path.name for path in folder.iterdir())
        argv = ["batch", str(source), "--out", str(folder), "--dry-run", "--budget", "40"]
        plan = await run_cli(*argv, "--json", env=cli_env())
        plain = await run_cli(*argv, env=cli_env())
        assert emu.ledger.creates_received == 2
    assert sorted(path.name for path in folder.iterdir()) == files_before
    assert plan.returncode == 1  # line 5 is unreadable
    (data,) = json_lines(out(plan))
    assert data["event"] == "plan"
    assert (data["total"], data["done"], data["to_send"], data["credits"]) == (5, 2, 2, 30)
    assert data["credits_spent_earlier"] == 25
    assert data["invalid"] == 1
    assert data["problems"][0]["position"] == 4
    assert "line 5: model: must be text" in data["problems"][0]["error"]
    assert plain.returncode == 1
    text = out(plain)
    assert "nothing sent" in text
    assert "2 creates, 30 credits" in text
    assert "does not fit: 15 credits short" in text


# --- help ----------------------------------------------------------------------------------------


def test_every_subcommand_has_a_description_and_poll_speed_is_documented(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each subcommand's --help has a description; --poll-speed and its variable are listed."""
    parser = build_parser()
    (commands,) = [action for action in parser._actions if action.dest == "command"]
    choices = getattr(commands, "choices", {})
    assert {"generate", "batch", "status", "wait", "emulator", "demo"} <= set(choices)
    for name, sub in choices.items():
        assert sub.description, name
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--poll-speed S divide every poll delay by S" in help_text
    assert "$NANOBANANA_POLL_SPEED" in help_text


# --- the emulator --------------------------------------------------------------------------------


async def read_until(process: Process, buffer: list[str], needle: str) -> str:
    """Read the process's output into *buffer* until a whole line holds *needle*; return it."""
    assert process.stdout is not None
    chunks = TextReceiveStream(process.stdout)
    with anyio.fail_after(30):
        while True:
            text = "".join(buffer)
            complete = text[: text.rfind("\n") + 1]
            found = [line for line in complete.splitlines() if needle in line]
            if found:
                return found[-1]
            buffer.append(await chunks.receive())


@posix_only
async def test_the_emulator_prints_settings_to_match_its_speed_and_its_ledger(
    tmp_path: Path,
) -> None:
    """The emulator prints an export line (URL, key, poll speed) that works as printed, and
    prints its ledger on SIGUSR1 and when it stops."""
    argv = [*COMMAND, "emulator", "--port", "0", "--api-key", "k", "--speed", "1000"]
    async with await anyio.open_process(argv, env=cli_env(poll_speed=None)) as process:
        buffer: list[str] = []
        export = await read_until(process, buffer, "export ")
        settings = dict(item.split("=", 1) for item in shlex.split(export)[1:])
        assert settings["NANOBANANA_API_KEY"] == "k"
        assert settings["NANOBANANA_POLL_SPEED"] == "1000"
        assert settings["NANOBANANA_BASE_URL"].startswith("http://127.0.0.1:")
        result = await run_cli(
            "generate", "a banana cat", env=cli_env(poll_speed=None, **settings), cwd=tmp_path
        )
        assert result.returncode == 0, err(result)
        process.send_signal(signal.SIGUSR1)
        asked = await read_until(process, buffer, "ledger:")
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await process.wait() == 0
        assert process.stdout is not None
        async for text in TextReceiveStream(process.stdout):
            buffer.append(text)
    ledgers = [line for line in "".join(buffer).splitlines() if line.startswith("ledger:")]
    assert ledgers == [asked, ledgers[-1]]
    assert "1 creates received" in asked
    assert "15 credits charged" in ledgers[-1]
    assert "1 at most" in ledgers[-1]
    assert is_png(tmp_path / out(result).strip())


# --- the demo ------------------------------------------------------------------------------------


async def test_demo_json_reports_no_deleted_journal_and_says_its_images_are_placeholders(
    tmp_path: Path,
) -> None:
    """`demo --json` ends with a summary whose journal is null (the demo keeps none); the plain
    demo says its images are placeholders."""
    env = cli_env(poll_speed=None)
    result = await run_cli("demo", "--json", "--out", str(tmp_path / "demo"), env=env)
    plain = await run_cli("demo", "--out", str(tmp_path / "again"), env=env)
    assert result.returncode == 0, err(result)
    summary = json_lines(out(result))[-1]
    assert summary["event"] == "summary"
    assert summary["succeeded"] == 6
    assert summary["journal"] is None
    assert plain.returncode == 0
    assert "placeholder" in out(plain).splitlines()[0]


async def test_demo_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    """`demo --out FILE` exits 2 with one line, before starting anything."""
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    result = await run_cli("demo", "--out", str(tmp_path / "taken"), env=cli_env(poll_speed=None))
    assert result.returncode == 2
    assert "--out" in one_line(err(result))


# --- loose ends ----------------------------------------------------------------------------------


def test_the_repository_has_its_license_and_ignores_the_demo_output() -> None:
    """The MIT LICENSE that pyproject names exists, and git ignores the demo's output folder."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "nanobanana-demo/" in ignored
