"""The CLI's --model takes known models, or another one given its --price (run as a user would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from nanobanana_async.testing import Emulator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

COMMAND = [sys.executable, "-m", "nanobanana_async"]
NEW = "nano-banana-x"


def env_for(emu: Emulator) -> dict[str, str]:
    """The emulator's key and URL, no proxy, fast polls."""
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


async def run(*args: str, emu: Emulator, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run the command to its end while the emulator serves."""
    with anyio.fail_after(90):
        return await anyio.run_process([*COMMAND, *args], env=env_for(emu), cwd=cwd, check=False)


async def test_an_unpriced_model_is_refused_with_the_way_to_price_it(tmp_path: Path) -> None:
    """A model outside the list, even with --any-model, exits 2 unsent and names --price."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        reported = await run("generate", "cat", "--model", "nano-banana-2", emu=emu, cwd=tmp_path)
        unknown = await run("generate", "cat", "--model", NEW, "--any-model", emu=emu, cwd=tmp_path)
        bad = await run("generate", "cat", "--price", "nano-banana-2", emu=emu, cwd=tmp_path)
        sent = len(emu.requests)
    assert reported.returncode == 2
    text = reported.stderr.decode()
    assert "nano-banana-2" in text
    assert "price is not published" in text
    assert "--price nano-banana-2=CREDITS" in text
    assert unknown.returncode == 2
    assert f"--price {NEW}=CREDITS" in unknown.stderr.decode()
    assert bad.returncode == 2
    assert "MODEL=CREDITS" in bad.stderr.decode()
    assert sent == 0


async def test_a_priced_reported_model_reaches_an_emulator_that_knows_it(tmp_path: Path) -> None:
    """`--model nano-banana-2 --price nano-banana-2=18` generates against a server selling it."""
    models = {"nano-banana-2": 18}
    async with Emulator(speed=1000, image_downscale=8, models=models) as emu:
        result = await run(
            "generate", "cat", "--model", "nano-banana-2", "--price", "nano-banana-2=18",
            "--out", str(tmp_path / "cat.png"), emu=emu, cwd=tmp_path,
        )  # fmt: skip
        charged = emu.ledger.credits_charged
    assert result.returncode == 0, result.stderr.decode()
    assert charged == 18


async def test_a_batch_budget_is_not_passed_by_a_dear_model(tmp_path: Path) -> None:
    """A batch of 5 with --budget 100 of a model costing 60 spends at most 100 (was 300)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(5)))
    async with Emulator(speed=1000, image_downscale=8, models={NEW: 60}, credits=None) as emu:
        unpriced = await run(
            "batch", str(prompts), "--out", str(tmp_path / "a"), "--model", NEW, "--any-model",
            "--budget", "100", emu=emu, cwd=tmp_path,
        )  # fmt: skip
        assert emu.ledger.credits_charged == 0
        priced = await run(
            "batch", str(prompts), "--out", str(tmp_path / "b"), "--model", NEW,
            "--price", f"{NEW}=60", "--budget", "100", emu=emu, cwd=tmp_path,
        )  # fmt: skip
        charged = emu.ledger.credits_charged
    assert unpriced.returncode == 2, unpriced.stdout.decode()
    assert priced.returncode != 0  # not everything fitted
    assert charged == 60


async def test_dry_run_prices_a_model_with_its_given_price(tmp_path: Path) -> None:
    """`batch --dry-run` counts a --price'd model at its given price."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    async with Emulator(speed=1000) as emu:
        result = await run(
            "batch", str(prompts), "--out", str(tmp_path / "o"), "--model", NEW,
            "--price", f"{NEW}=7", "--dry-run", emu=emu, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "14 credits" in result.stdout.decode()
