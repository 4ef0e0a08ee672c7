"""Support of the Redis tests: a redis-server process, and worker processes to read from."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nanobanana_async as nb

WORKER = Path(__file__).with_name("worker.py")
#: Set (as .ci/run does) to make a missing redis-server or redis-cli an error instead of a skip.
REQUIRE_ENV = "NANOBANANA_REQUIRE_REDIS"
#: No single wait of a test for a worker may take longer than this (a hang fails, not blocks).
PATIENCE = 90.0


async def warm(url: str, name: str) -> None:
    """Create the store of *name* before a test's limiters use it (they find it known, not new)."""
    async with nb.RedisLimiter(url, name=name, max_concurrency=1, lease_seconds=0.5) as limiter:
        await limiter.release(await limiter.acquire())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server process without persistence, that a test can stop and start again."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients use (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server on its port and wait until it answers PING."""
        assert self.process is None
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server (all its data is lost) and wait for it to end."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=20)
            self.process = None

    def restart(self) -> None:
        """Kill the server and start an empty one on the same port."""
        self.stop()
        self.start()


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
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by aclose()
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
