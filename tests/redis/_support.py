"""Start worker processes and read what they report."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.py")
#: No single wait of a test for a worker may take longer than this (a hang fails, not blocks).
PATIENCE = 90.0


class Worker:
    """A worker process (see worker.py) and the lines it printed so far."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: Any) -> None:
        self.process = process
        self.stderr = stderr
        self.lines: list[str] = []
        self.saved_errors = ""

    @classmethod
    async def start(cls, **config: Any) -> Worker:
        """Start a worker with *config* (see worker.py)."""
        stderr = tempfile.TemporaryFile()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        return cls(process, stderr)

    async def _line(self) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), PATIENCE)
        if not raw:
            raise AssertionError(f"the worker ended early:\n{self.errors()}")
        line = raw.decode().strip()
        self.lines.append(line)
        return line

    async def wait_for(self, word: str, count: int = 1) -> None:
        """Read lines until *count* lines (in all) start with *word*."""
        while sum(line.split(" ", 1)[0] == word for line in self.lines) < count:
            await self._line()

    def go(self) -> None:
        """Let a worker started with wait_go submit."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    def created(self) -> list[str]:
        """The task ids this worker printed."""
        return [line.split()[1] for line in self.lines if line.startswith("created ")]

    async def summary(self) -> dict[str, int]:
        """Read to the end; return the worker's counts (it must exit cleanly)."""
        while not self.lines or not self.lines[-1].startswith("summary "):
            await self._line()
        code = await asyncio.wait_for(self.process.wait(), PATIENCE)
        assert code == 0, self.errors()
        summary: dict[str, int] = json.loads(self.lines[-1].split(" ", 1)[1])
        return summary

    def kill(self) -> None:
        """SIGKILL the worker: no cleanup of any kind runs."""
        self.process.send_signal(signal.SIGKILL)

    async def reap(self) -> None:
        """Wait for a killed worker to be gone."""
        await asyncio.wait_for(self.process.wait(), PATIENCE)

    def errors(self) -> str:
        """What the worker wrote to stderr (the end of it)."""
        if self.stderr.closed:
            return self.saved_errors
        self.stderr.seek(0)
        return str(self.stderr.read().decode(errors="replace"))[-3000:]

    async def aclose(self) -> None:
        """Kill the worker if it still runs and free its pipes."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if not self.stderr.closed:
            self.saved_errors = self.errors()
            self.stderr.close()
