"""The `nanobanana` command, run for real in a subprocess against an in-process emulator."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

import nanobanana_async as nb
from nanobanana_async.cli import main
from nanobanana_async.testing import Emulator, Fault

from ._helpers import (
    COMMAND,
    PNG_SIGNATURE,
    cli_env,
    err,
    images_by_position,
    is_png,
    json_lines,
    last_states,
    listing,
    out,
    run_cli,
    run_on_terminal,
    task_ids,
    wait_for_task_ids,
    write_prompts,
)

pytestmark = pytest.mark.anyio

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and terminals")


@pytest.mark.slow  # about 10-20 s: started first by the suite
@posix_only
async def test_sigkill_halfway_then_rerun_makes_each_image_exactly_once(tmp_path: Path) -> None:
    """A batch killed with SIGKILL resumes: one image per prompt, one create per prompt."""
    prompts = write_prompts(tmp_path / "prompts.txt", 8)
    folder = tmp_path / "out"
    journal = folder / "journal.jsonl"
    argv = ["batch", str(prompts), "--out", str(folder), "--concurrency", "2"]
    # 3 s per task: after the second pair of task ids is journaled, nothing can be sent until
    # one of that pair ends, so the kill lands between creates (3 s of margin, even under load).
    async with Emulator(speed=80, duration=240, image_downscale=8) as emu:
        env = cli_env(emu, poll_speed=80)
        with (tmp_path / "first.log").open("wb") as log:
            process = await anyio.open_process([*COMMAND, *argv], env=env, stdout=log, stderr=log)
            async with process:
                await wait_for_task_ids(journal, 4)
                process.kill()
                assert await process.wait() == -signal.SIGKILL
        assert emu.ledger.creates_received == 4
        assert len(task_ids(journal)) == 4
        assert "submitting" not in last_states(journal).values()  # no create left in doubt
        result = await run_cli(*argv, env=env)
        assert result.returncode == 0, err(result) + out(result)
        assert emu.ledger.creates_received == 8
        assert emu.ledger.tasks_created == 8
    images = images_by_position(folder, 8)
    assert all(len(paths) == 1 for paths in images.values()), images
    assert len(list(folder.glob("*.png"))) == 8
    assert "resumed" in out(result)


@posix_only
async def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    """SIGINT exits 130 with no create left in doubt; rerunning finishes with one create each."""
    prompts = write_prompts(tmp_path / "prompts.txt", 6)
    folder = tmp_path / "out"
    journal = folder / "journal.jsonl"
    argv = ["batch", str(prompts), "--out", str(folder), "--concurrency", "3"]
    async with Emulator(speed=80, duration=40, image_downscale=8) as emu:
        env = cli_env(emu, poll_speed=80)
        with (tmp_path / "first.log").open("wb") as log:
            process = await anyio.open_process([*COMMAND, *argv], env=env, stdout=log, stderr=log)
            async with process:
                await wait_for_task_ids(journal, 3)
                process.send_signal(signal.SIGINT)
                with anyio.fail_after(30):
                    assert await process.wait() == 130
        log_text = (tmp_path / "first.log").read_text(encoding="utf-8")
        assert "stopping" in log_text
        assert "unfinished" in log_text
        assert "submitting" not in last_states(journal).values()
        result = await run_cli(*argv, env=env)
        assert result.returncode == 0, err(result)
        assert emu.ledger.creates_received == 6
    assert all(len(paths) == 1 for paths in images_by_position(folder, 6).values())


async def test_budget_caps_what_the_service_charges_across_runs(tmp_path: Path) -> None:
    """--budget never lets the ledger pass it; a rerun counts what earlier runs spent."""
    prompts = write_prompts(tmp_path / "prompts.txt", 6)
    folder = tmp_path / "out"
    argv = ["batch", str(prompts), "--out", str(folder), "--concurrency", "4"]
    async with Emulator(speed=1000, image_downscale=8, credits=None) as emu:
        env = cli_env(emu)
        first = await run_cli(*argv, "--budget", "50", env=env)
        assert first.returncode == 1
        assert emu.ledger.credits_charged == 45
        assert "skipped" in out(first)
        assert "budget" in out(first)
        again = await run_cli(*argv, "--budget", "50", env=env)
        assert again.returncode == 1
        assert emu.ledger.credits_charged == 45
        more = await run_cli(*argv, "--budget", "100", env=env)
        assert more.returncode == 0, out(more)
        assert emu.ledger.credits_charged == 90
        assert emu.ledger.creates_received == 6


async def test_demo_writes_real_pngs_quickly_without_a_key(tmp_path: Path) -> None:
    """`nanobanana demo` needs no key nor network and writes six PNGs (a hang fails at 120 s)."""
    result = await run_cli(
        "demo", "--out", str(tmp_path / "demo"), env=cli_env(poll_speed=None), timeout=120
    )
    assert result.returncode == 0, err(result)
    images = sorted((tmp_path / "demo").glob("*.png"))
    assert len(images) == 6
    assert all(path.read_bytes()[:8] == PNG_SIGNATURE for path in images)
    assert "summary" in out(result)
    assert "succeeded  6" in out(result)
    assert err(result) == ""


async def test_a_missing_input_file_is_a_one_line_usage_error(tmp_path: Path) -> None:
    """A batch of a file that does not exist exits 2 with one line naming it."""
    result = await run_cli(
        "batch", str(tmp_path / "nope.txt"), "--out", str(tmp_path), env=cli_env(api_key="k")
    )
    assert result.returncode == 2
    assert err(result).count("\n") == 1
    assert "nope.txt" in err(result)
    assert "no such file" in err(result)


async def test_a_missing_key_names_the_option_and_the_variable(tmp_path: Path) -> None:
    """Without a key the command exits 2 with one line naming --api-key and the variable."""
    result = await run_cli("generate", "a banana cat", env=cli_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert err(result) == (
        "nanobanana: error: no API key: pass --api-key or set NANOBANANA_API_KEY\n"
    )
    assert listing(tmp_path) == []


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No command, a bad option value or a bad request field all exit 2."""
    assert main([]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["batch", "x", "--out", "o", "--concurrency", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    bad_ratio = ["generate", "cat", "--aspect-ratio", "7:3", "--out", str(tmp_path)]
    assert main([*bad_ratio, "--api-key", "k", "--base-url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("nanobanana: error: aspect_ratio: 7:3")
    assert list(tmp_path.iterdir()) == []


async def test_a_bad_jsonl_line_is_reported_by_number_and_the_rest_runs(tmp_path: Path) -> None:
    """A broken JSONL line fails alone with its line number; the others save images; exit 1."""
    source = tmp_path / "requests.jsonl"
    source.write_text(
        '{"prompt": "a banana cat", "model": "nano-banana-fast", "aspect_ratio": "16:9"}\n'
        '{"prompt": "broken", \n'
        "\n"
        '{"prompt": "a banana dog", "image_size": "2K", "model": "nano-banana-pro"}\n'
        '{"prompt": "typo", "aspectRatio": "1:1"}\n',
        encoding="utf-8",
    )
    folder = tmp_path / "out"
    async with Emulator(speed=1000, image_downscale=8) as emu:
        result = await run_cli("batch", str(source), "--out", str(folder), env=cli_env(emu))
        assert emu.ledger.creates_received == 2
        fields = [record.fields for record in emu.requests if record.endpoint == "create"]
    assert result.returncode == 1
    text = out(result)
    assert "requests.jsonl, line 2: not valid JSON" in text
    assert "requests.jsonl, line 5: unknown field 'aspectRatio'" in text
    images = images_by_position(folder, 4)
    assert [len(images[i]) for i in range(4)] == [1, 0, 1, 0]
    assert {(f or {}).get("model") for f in fields} == {"nano-banana-fast", "nano-banana-pro"}
    assert "failed     2" in text


async def test_csv_input_uses_its_header_and_reports_bad_rows(tmp_path: Path) -> None:
    """A CSV with a header row runs; a row breaking a rule fails with its line number."""
    source = tmp_path / "requests.csv"
    source.write_text(
        "prompt,model,aspect_ratio\n"
        '"a banana, in a bowl",nano-banana-fast,1:1\n'
        "a bad ratio,nano-banana,7:3\n"
        "defaults apply,,\n",
        encoding="utf-8",
    )
    folder = tmp_path / "out"
    async with Emulator(speed=1000, image_downscale=8) as emu:
        result = await run_cli(
            "batch",
            str(source),
            "--out",
            str(folder),
            "--model",
            "nano-banana-pro",
            env=cli_env(emu),
        )
        created = [record.fields for record in emu.requests if record.endpoint == "create"]
    assert result.returncode == 1
    assert "requests.csv, line 3: aspect_ratio" in out(result)
    assert [(f or {}).get("model") for f in created] == ["nano-banana-fast", "nano-banana-pro"]
    assert [(f or {}).get("prompt") for f in created] == ["a banana, in a bowl", "defaults apply"]
    assert [len(paths) for paths in images_by_position(folder, 3).values()] == [1, 0, 1]


async def test_a_csv_without_a_prompt_column_is_a_usage_error(tmp_path: Path) -> None:
    """A CSV header that names no prompt column (or an unknown one) exits 2 before anything runs."""
    source = tmp_path / "requests.csv"
    source.write_text("text,model\nhello,nano-banana\n", encoding="utf-8")
    result = await run_cli("batch", str(source), "--out", str(tmp_path), env=cli_env(api_key="k"))
    assert result.returncode == 2
    assert "'prompt' column" in err(result)


async def test_batch_json_prints_one_object_per_line_then_the_summary(tmp_path: Path) -> None:
    """--json prints each event as a JSON line and ends with the summary object."""
    prompts = write_prompts(tmp_path / "prompts.txt", 3)
    # 1 s tasks: long enough that every task reports progress before it ends, under any load.
    async with Emulator(speed=1000, duration=1000, image_downscale=8) as emu:
        result = await run_cli(
            "batch", str(prompts), "--out", str(tmp_path / "out"), "--json", env=cli_env(emu)
        )
    assert result.returncode == 0
    lines = json_lines(out(result))
    summary = lines[-1]
    assert summary["event"] == "summary"
    assert summary["succeeded"] == 3
    assert summary["exit_code"] == 0
    assert summary["problems"] == []
    assert summary["credits_spent"] == 45
    saved = [line for line in lines if line["event"] == "succeeded"]
    assert sorted(line["position"] for line in saved) == [0, 1, 2]
    assert all(is_png(Path(line["paths"][0])) for line in saved)
    assert {line["event"] for line in lines} >= {"submitted", "progress", "succeeded", "summary"}


async def test_generate_shows_progress_then_prints_the_saved_path(tmp_path: Path) -> None:
    """`generate` saves the image (by default in the current folder) and prints only its path."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        result = await run_cli(
            "generate",
            "A banana cat!",
            "--model",
            "nano-banana-fast",
            env=cli_env(emu),
            cwd=tmp_path,
        )
        chosen = await run_cli(
            "generate", "a dog", "--out", str(tmp_path / "dog.png"), "--aspect-ratio", "16:9",
            env=cli_env(emu),
        )  # fmt: skip
    assert result.returncode == 0, err(result)
    (path,) = out(result).splitlines()
    assert path.startswith("a-banana-cat-")
    assert path.endswith(".png")
    assert (tmp_path / path).read_bytes()[:8] == PNG_SIGNATURE
    assert "submitted" in err(result)
    assert "(5 credits)" in err(result)
    assert chosen.returncode == 0
    assert out(chosen) == f"{tmp_path / 'dog.png'}\n"


async def test_generate_json_and_a_failed_task(tmp_path: Path) -> None:
    """--json ends with a result object; a failed task exits 1 with its reason."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        good = await run_cli("generate", "cat", "--json", env=cli_env(emu), cwd=tmp_path)
    async with Emulator(speed=1000, failure_rate=1.0, failure_reasons=["output_moderation"]) as emu:
        bad = await run_cli("generate", "cat", "--json", env=cli_env(emu), cwd=tmp_path)
    assert good.returncode == 0
    result = json_lines(out(good))[-1]
    assert result["event"] == "result"
    assert result["status"] == "succeeded"
    assert result["cost"] == 15
    assert is_png(tmp_path / result["paths"][0])
    assert bad.returncode == 1
    failed = json_lines(out(bad))[-1]
    assert failed["status"] == "failed"
    assert failed["failure_reason"] == "output_moderation"


async def test_generate_names_a_paid_task_it_could_not_follow(tmp_path: Path) -> None:
    """An error that ends a paid task's polling prints its id and the `nanobanana wait` line."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        # Every poll is refused (403, not retried): the task runs on, the command cannot follow it.
        emu.faults.inject(Fault.status(403), endpoint="result")
        result = await run_cli("generate", "cat", env=cli_env(emu), cwd=tmp_path)
        (task_id,) = emu.tasks
    assert result.returncode != 0
    assert f"nanobanana: task {task_id} may still run" in err(result)
    assert f"nanobanana wait {task_id} --out PATH" in err(result)


async def test_status_and_wait_follow_a_task_submitted_elsewhere(tmp_path: Path) -> None:
    """`status` polls once; `wait` follows the task to the end and saves or prints its image."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        async with nb.Client(
            emu.api_key, base_url=emu.base_url, poll=nb.PollPolicy(speed=1000)
        ) as client:
            task = await client.submit("a banana cat")
        env = cli_env(emu)
        runs = {
            "saved": ["wait", task.id, "--out", str(tmp_path) + "/"],
            "urls": ["wait", task.id],
            "status": ["status", task.id],
            "status_json": ["status", task.id, "--json"],
            "unknown": ["status", "3-no-such-task"],
        }
        done: dict[str, subprocess.CompletedProcess[bytes]] = {}

        async def run(name: str) -> None:
            done[name] = await run_cli(*runs[name], env=env)

        async with anyio.create_task_group() as group:
            for name in runs:
                group.start_soon(run, name)
    saved, urls, status = done["saved"], done["urls"], done["status"]
    status_json, unknown = done["status_json"], done["unknown"]
    assert saved.returncode == 0, err(saved)
    assert out(saved) == f"{tmp_path / task.id}.png\n"
    assert (tmp_path / f"{task.id}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert urls.returncode == 0
    assert out(urls) == f"{emu.base_url}/files/{task.id}/0.png\n"
    assert status.returncode == 0
    assert out(status).startswith(f"{task.id}: succeeded (100%)\n")
    data = json.loads(out(status_json))
    assert data["event"] == "status"
    assert data["status"] == "succeeded"
    assert data["results"][0]["url"].endswith("/0.png")
    assert unknown.returncode == 1
    assert "HTTP 404" in err(unknown)


@posix_only
async def test_a_terminal_gets_the_live_display(tmp_path: Path) -> None:
    """On a terminal, with rich installed, the batch shows live bars and a summary table."""
    pytest.importorskip("rich")
    prompts = write_prompts(tmp_path / "prompts.txt", 3)
    async with Emulator(speed=1000, image_downscale=8) as emu:
        code, text = await run_on_terminal(
            [*COMMAND, "batch", str(prompts), "--out", str(tmp_path / "out")], cli_env(emu)
        )
    assert code == 0, text
    assert "━" in text
    assert "\x1b[" in text
    assert "succeeded │ 3" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@posix_only
async def test_without_rich_a_terminal_gets_plain_lines(tmp_path: Path) -> None:
    """Without rich the command still works on a terminal, printing plain lines."""
    prompts = write_prompts(tmp_path / "prompts.txt", 3)
    code = (
        "import sys; sys.modules['rich'] = None; from nanobanana_async.cli import main; "
        f"raise SystemExit(main(['batch', {str(prompts)!r}, '--out', {str(tmp_path / 'out')!r}]))"
    )
    async with Emulator(speed=1000, image_downscale=8) as emu:
        status, text = await run_on_terminal([sys.executable, "-c", code], cli_env(emu))
    assert status == 0, text
    assert "\x1b[" not in text
    assert text.count("saved      #") == 3
    assert "succeeded  3" in text


async def test_the_emulator_command_serves_until_interrupted() -> None:
    """`nanobanana emulator` prints its URL and key, serves, and exits 0 on Ctrl-C."""
    argv = [*COMMAND, "emulator", "--port", "0", "--api-key", "k", "--speed", "1000"]
    async with await anyio.open_process(argv, env=cli_env(), stderr=None) as process:
        assert process.stdout is not None
        buffer = ""
        with anyio.fail_after(30):
            async for text in TextReceiveStream(process.stdout):
                buffer += text
                if buffer.count("\n") >= 2:
                    break
        first, second = buffer.splitlines()[:2]
        assert first.startswith("Nano Banana emulator on http://127.0.0.1:")
        assert second == "API key: k"
        base_url = first.rsplit(" ", 1)[1]
        async with nb.Client("k", base_url=base_url, poll=nb.PollPolicy(speed=1000)) as client:
            result = await client.generate("a banana cat")
        assert result.credits_cost == 15
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(30):
            assert await process.wait() == 0


async def test_the_console_script_is_installed() -> None:
    """The `nanobanana` console script runs the same command."""
    script = shutil.which("nanobanana")
    if script is None:
        pytest.skip("the package is not installed with its scripts")
    result = await anyio.run_process([script, "--version"], check=False)
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"nanobanana-async {nb.__version__}"


async def test_the_demo_writes_a_gallery_and_gallery_rebuilds_it(tmp_path: Path) -> None:
    """The demo leaves index.html beside its images; `nanobanana gallery DIR` writes it again."""
    folder = tmp_path / "demo"
    result = await run_cli("demo", "--out", str(folder), env=cli_env(poll_speed=None))
    assert result.returncode == 0, err(result)
    page = folder / "index.html"
    assert all(path.name in page.read_text() for path in folder.glob("*.png"))
    assert "index.html" in out(result)
    # The demo's journal was temporary: rebuild from a batch of our own instead.
    async with Emulator(speed=1000, image_downscale=8) as emu:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a cat\na dog\n")
        batch = await run_cli("batch", str(prompts), "--out", str(tmp_path / "b"), env=cli_env(emu))
        assert batch.returncode == 0, err(batch)
    (tmp_path / "b" / "index.html").unlink()
    rebuilt = await run_cli("gallery", str(tmp_path / "b"), env=cli_env(poll_speed=None))
    assert rebuilt.returncode == 0, err(rebuilt)
    html = (tmp_path / "b" / "index.html").read_text()
    assert "a cat" in html
    assert "a dog" in html
    assert out(rebuilt).strip() == str((tmp_path / "b" / "index.html").resolve())


async def test_gallery_of_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    """`nanobanana gallery` on a folder that does not exist says so in one line, exit 2."""
    result = await run_cli("gallery", str(tmp_path / "nope"), env=cli_env(poll_speed=None))
    assert result.returncode == 2
    assert "nope" in err(result)
    assert len(err(result).strip().splitlines()) == 1
