"""Helpers for the CLI tests: the real command in a subprocess, an emulator in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from nanobanana_async.testing import Emulator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMAND = [sys.executable, "-m", "nanobanana_async"]


def cli_env(
    emu: Emulator | None = None, *, poll_speed: float | None = 1000, **extra: str
) -> dict[str, str]:
    """Return an environment for the command: the emulator's key and URL, no proxy, fast polls."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("NANOBANANA_") and key.lower() not in ("http_proxy", "https_proxy")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONIOENCODING"] = "utf-8"
    if emu is not None:
        env["NANOBANANA_API_KEY"] = emu.api_key
        env["NANOBANANA_BASE_URL"] = emu.base_url
    if poll_speed is not None:
        env["NANOBANANA_POLL_SPEED"] = str(poll_speed)
    env.update(extra)
    return env


async def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m nanobanana_async ARGS`` to completion (the emulator keeps serving)."""
    with anyio.fail_after(timeout):
        return await anyio.run_process([*COMMAND, *args], env=env, cwd=cwd, check=False)


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    """Return the decoded standard output."""
    return result.stdout.decode("utf-8")


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    """Return the decoded standard error."""
    return result.stderr.decode("utf-8")


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse every line of *text* as one JSON object."""
    return [json.loads(line) for line in text.splitlines()]


def task_ids(journal: Path) -> set[str]:
    """Return the task ids the journal at *journal* holds so far."""
    if not journal.exists():
        return set()
    ids = set()
    for line in journal.read_text(encoding="utf-8").splitlines():
        if line.endswith("}"):
            task_id = json.loads(line).get("task_id")
            if task_id:
                ids.add(task_id)
    return ids


async def wait_for_task_ids(journal: Path, count: int, *, max_checks: int = 6000) -> None:
    """Wait (in 5 ms steps, boundedly) until the journal holds *count* task ids."""
    for _ in range(max_checks):
        if len(task_ids(journal)) >= count:
            return
        await anyio.sleep(0.005)
    raise AssertionError(f"the journal never held {count} task ids")


def listing(folder: Path) -> list[Path]:
    """Return what *folder* holds."""
    return sorted(folder.iterdir())


def is_png(path: Path) -> bool:
    """Whether *path* is a file that starts with the PNG signature."""
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def last_states(journal: Path) -> dict[int, str]:
    """Return the last journaled state of each position."""
    records = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    return {record["position"]: record["state"] for record in records}


def images_by_position(folder: Path, count: int) -> dict[int, list[Path]]:
    """Return the PNGs of each position 0..count-1, checking every one is a real PNG."""
    found = {position: sorted(folder.glob(f"{position:05d}-*.png")) for position in range(count)}
    for paths in found.values():
        for path in paths:
            assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    return found


def write_prompts(path: Path, count: int, stem: str = "prompt") -> Path:
    """Write a text input of *count* prompts (one a line) and return its path."""
    path.write_text("".join(f"{stem} number {i}\n" for i in range(count)), encoding="utf-8")
    return path


async def run_on_terminal(
    argv: list[str], env: dict[str, str], cwd: Path | None = None
) -> tuple[int, str]:
    """Run *argv* with a pseudo-terminal as stdin, stdout and stderr; return (exit code, output)."""
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def read_all() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    try:
        with anyio.fail_after(60):
            process = await anyio.open_process(
                argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env, cwd=cwd
            )
            os.close(terminal)
            terminal = -1
            async with process, anyio.create_task_group() as group:
                group.start_soon(anyio.to_thread.run_sync, read_all)
                code = await process.wait()
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    return code, b"".join(chunks).decode("utf-8", "replace")
