"""A calmer first hour (issue 19): a dry run over budget fails, the summary shows the gallery,
uncertain lines say how to retry, Ctrl-C on `generate` says how to get the image, and the
`--json` objects of `wait` and `status` tell the truth in the shared names."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import COMMAND, cli_env, err, json_lines, listing, out, run_cli, write_prompts

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def test_a_dry_run_over_budget_exits_1(tmp_path: Path) -> None:
    """`batch --dry-run --budget` exits 1 when the plan does not fit, 0 when it does."""
    prompts = write_prompts(tmp_path / "prompts.txt", 2)  # 2 x 15 credits
    argv = ["batch", str(prompts), "--out", str(tmp_path / "out"), "--dry-run"]
    env = cli_env(NANOBANANA_API_KEY="sk-unused-0123456789")
    short = await run_cli(*argv, "--budget", "10", env=env)
    short_json = await run_cli(*argv, "--budget", "10", "--json", env=env)
    enough = await run_cli(*argv, "--budget", "30", env=env)
    assert short.returncode == 1, out(short)
    assert "does not fit: 20 credits short" in out(short)
    (plan,) = json_lines(out(short_json))
    assert short_json.returncode == 1
    assert plan["exit_code"] == 1
    assert plan["fits_budget"] is False
    assert enough.returncode == 0, out(enough)
    assert "the run fits" in out(enough)


async def test_the_batch_summary_shows_the_gallery_path(tmp_path: Path) -> None:
    """The plain summary has a `gallery` row with the page's path; the JSON summary has it too."""
    prompts = write_prompts(tmp_path / "prompts.txt", 2)
    folder = tmp_path / "out"
    async with Emulator(speed=1000, image_downscale=8) as emu:
        plain = await run_cli("batch", str(prompts), "--out", str(folder), env=cli_env(emu))
        as_json = await run_cli(
            "batch", str(prompts), "--out", str(folder), "--json", env=cli_env(emu)
        )
    assert plain.returncode == 0, err(plain)
    rows = [line.split(None, 1) for line in out(plain).splitlines() if line.startswith("  ")]
    gallery = {row[0]: row[1] for row in rows if len(row) == 2}["gallery"]
    assert Path(gallery) == folder / "index.html"
    assert Path(gallery) in listing(folder)
    summary = json_lines(out(as_json))[-1]
    assert summary["event"] == "summary"
    assert Path(summary["gallery"]) == folder / "index.html"


async def test_uncertain_lines_mention_retry_uncertain(tmp_path: Path) -> None:
    """An item whose create answer was lost is reported with how to send it again."""
    prompts = write_prompts(tmp_path / "prompts.txt", 1)
    async with Emulator(speed=1000, image_downscale=8) as emu:
        emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
        result = await run_cli(
            "batch", str(prompts), "--out", str(tmp_path / "out"), env=cli_env(emu)
        )
    assert result.returncode == 1
    uncertain = [line for line in out(result).splitlines() if "uncertain" in line]
    event_lines = [line for line in uncertain if line.startswith("uncertain ")]
    problem_lines = [line for line in uncertain if line.startswith("  #0 uncertain")]
    assert event_lines, out(result)
    assert problem_lines, out(result)
    for line in event_lines + problem_lines:
        assert "--retry-uncertain" in line, line


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_ctrl_c_on_generate_prints_the_wait_command(tmp_path: Path) -> None:
    """Ctrl-C after the create answered prints `nanobanana wait ID` and exits 130."""
    # Real-time speed: the task runs for seconds of real time, long after the signal.
    async with Emulator(speed=1, duration=600, image_downscale=8) as emu:
        process = await anyio.open_process(
            [*COMMAND, "generate", "a cat", "--out", str(tmp_path / "cat.png")],
            env=cli_env(emu, poll_speed=200),
        )
        async with process:
            with anyio.fail_after(60):
                # A poll means the create's answer (the task id) reached the command.
                for _ in range(6000):
                    if emu.ledger.polls_received:
                        break
                    await anyio.sleep(0.01)
                process.send_signal(signal.SIGINT)
                code = await process.wait()
            assert process.stderr is not None
            chunks = [chunk async for chunk in process.stderr]
        (task_id,) = list(emu.tasks)
    stderr = b"".join(chunks).decode()
    assert code == 130, stderr
    assert f"nanobanana wait {task_id}" in stderr


async def test_a_folder_given_as_image_names_the_field_once(tmp_path: Path) -> None:
    """`--image FOLDER` says `images[0]: ... is not a file`, naming the field once."""
    result = await run_cli(
        "generate",
        "a cat",
        "--image",
        str(tmp_path),
        env=cli_env(NANOBANANA_API_KEY="sk-unused-0123456789"),
    )
    assert result.returncode == 2
    line = err(result).strip()
    assert line.count("images[0]") == 1, line
    assert f"images[0]: {tmp_path} is not a file" in line


async def test_wait_and_status_json_of_a_finished_task(tmp_path: Path) -> None:
    """`wait --json` shows progress 100 (never 0) for a finished task; `status --json` says
    `task_id`, as every other event does."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        async with nb.Client(
            emu.api_key, base_url=emu.base_url, poll=nb.PollPolicy(speed=1000)
        ) as client:
            task = await client.submit("a cat")
            await task
        waited = await run_cli("wait", task.id, "--json", env=cli_env(emu))
        status = await run_cli("status", task.id, "--json", env=cli_env(emu))
    events = json_lines(out(waited))
    progress = [e["progress"] for e in events if e["event"] == "progress"]
    assert progress == [100], events
    assert events[-1]["event"] == "result"
    (data,) = json_lines(out(status))
    assert data["task_id"] == task.id
    assert "id" not in data
    assert all("task_id" in e for e in events)


def test_site_is_ignored_by_git() -> None:
    """`site/` (mkdocs' output) is in .gitignore."""
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "site/" in lines
