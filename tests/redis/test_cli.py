"""`nanobanana batch --redis URL --limiter-name NAME`: batch processes on one key share limits."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import anyio
import pytest
from _redis_support import RedisServer, free_port, warm

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

KEY = "nb-redis-cli-key"


def _env(emu: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOBANANA_")}
    env.update(
        NANOBANANA_API_KEY=KEY,
        NANOBANANA_BASE_URL=emu.base_url,
        NANOBANANA_POLL_SPEED="20",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONIOENCODING="utf-8",
    )
    return env


def _batch(tmp: Path, name: str, prompts: list[str], *options: str) -> list[str]:
    source = tmp / f"{name}.txt"
    source.write_text("\n".join(prompts) + "\n")
    return [
        sys.executable, "-m", "nanobanana_async", "batch", str(source),
        "--out", str(tmp / name), *options,
    ]  # fmt: skip


async def test_two_batch_processes_share_one_cap(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two batches on different inputs with --redis and a cap of 3 never run more than 3 at once."""
    name = f"cli-{os.urandom(4).hex()}"
    await warm(redis_server.url, name)
    shared = ["--redis", redis_server.url, "--limiter-name", name, "--concurrency", "3"]
    shared += ["--lease-seconds", "2"]
    async with Emulator(api_key=KEY, credits=None, speed=20.0, duration=10.0) as emu:
        commands = [
            _batch(tmp_path, "a", [f"a {i}" for i in range(6)], *shared),
            _batch(tmp_path, "b", [f"b {i}" for i in range(6)], *shared),
        ]
        results = []

        async def run(command: list[str]) -> None:
            results.append(await anyio.run_process(command, env=_env(emu), check=False))

        with anyio.fail_after(100):
            async with anyio.create_task_group() as group:
                for command in commands:
                    group.start_soon(run, command)
    assert [r.returncode for r in results] == [0, 0], [r.stderr.decode() for r in results]
    assert emu.ledger.tasks_created == 12
    assert emu.ledger.max_running <= 3
    assert len(list((tmp_path / "a").glob("*.png"))) == 6
    assert len(list((tmp_path / "b").glob("*.png"))) == 6


async def test_a_redis_that_is_not_there_fails_closed(tmp_path: Path) -> None:
    """--redis pointing where nothing listens sends nothing and names Redis in the problem."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with Emulator(api_key=KEY, credits=None, speed=20.0) as emu:
        command = _batch(tmp_path, "c", ["never sent"], "--redis", url)
        result = await anyio.run_process(command, env=_env(emu), check=False)
    assert result.returncode != 0
    assert emu.ledger.creates_received == 0
    assert "Redis" in result.stdout.decode() + result.stderr.decode()


async def test_a_batch_waiting_for_a_shared_slot_says_so_on_stderr(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A batch whose create waits over 2 s for a slot held by another process prints why."""
    name = f"cli-{os.urandom(4).hex()}"
    async with (
        Emulator(api_key=KEY, credits=None, speed=20.0, duration=1.0) as emu,
        nb.RedisLimiter(redis_server.url, name=name, max_concurrency=1, lease_seconds=5.0) as other,
    ):
        lease = await other.acquire()  # the one slot, held by "another process"
        command = _batch(tmp_path, "w", ["waits"], "--redis", redis_server.url)
        command += ["--limiter-name", name, "--concurrency", "1", "--lease-seconds", "5"]
        process = await asyncio.create_subprocess_exec(
            *command,
            env=_env(emu),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            seen: list[str] = []
            while not any("wait for a slot" in line for line in seen):
                raw = await asyncio.wait_for(process.stderr.readline(), 60)
                assert raw, f"the batch ended without telling its wait: {seen}"
                seen.append(raw.decode())
            told = next(line for line in seen if "wait for a slot" in line)
            assert told.startswith("nanobanana: ")
            assert "the cap: 1 of 1" in told
            assert emu.ledger.creates_received == 0
            await other.release(lease)
            rest = await asyncio.wait_for(process.stderr.read(), 60)
            assert await asyncio.wait_for(process.wait(), 60) == 0, rest.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert emu.ledger.creates_received == 1
