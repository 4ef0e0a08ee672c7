"""No silent waits (issue 19): against a server that accepts connections and never answers, every
command says on stderr, within seconds, what it waits for and which attempt it is; retries are
logged at INFO."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault

from ._helpers import COMMAND, cli_env

pytestmark = pytest.mark.anyio

#: Far longer than the first notice (3 s) may take even on a busy machine, far below a timeout.
NOTICE_BOUND = 40.0


@asynccontextmanager
async def silent_server(*, first_answer: bytes | None = None) -> AsyncIterator[str]:
    """A TCP server that reads requests and never answers (the first one gets *first_answer*)."""
    hold = asyncio.Event()
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if served == 1 and first_answer is not None:
                writer.write(first_answer)
                await writer.drain()
            await hold.wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        hold.set()
        server.close()
        await server.wait_closed()


async def stderr_until(argv: list[str], env: dict[str, str], needle: str) -> str:
    """Run the command until its stderr holds *needle*; stop it; return the stderr read."""
    text = ""
    process = await anyio.open_process([*COMMAND, *argv], env=env)
    async with process:
        try:
            assert process.stderr is not None
            with anyio.fail_after(NOTICE_BOUND):
                async for chunk in TextReceiveStream(process.stderr):
                    text += chunk
                    if needle in text:
                        break
        finally:
            process.terminate()
            await process.wait()
    return text


def env_for(url: str) -> dict[str, str]:
    """The command's environment for a server at *url*."""
    return cli_env(NANOBANANA_API_KEY="sk-test-0123456789", NANOBANANA_BASE_URL=url)


async def test_generate_says_what_it_waits_for(tmp_path: Path) -> None:
    """`generate` against a silent server names the create, its URL and attempt 1 on stderr."""
    async with silent_server() as url:
        text = await stderr_until(
            ["generate", "a cat", "--out", str(tmp_path / "cat.png")],
            env_for(url),
            "waiting for the answer",
        )
    assert f"waiting for the answer to POST {url}/api/v1/image/nano-banana" in text
    assert "(the create, attempt 1)" in text
    assert "sk-test-0123456789" not in text


async def test_batch_says_what_it_waits_for(tmp_path: Path) -> None:
    """`batch` against a silent server says it waits for the create's answer."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n", encoding="utf-8")
    async with silent_server() as url:
        text = await stderr_until(
            ["batch", str(prompts), "--out", str(tmp_path / "out")],
            env_for(url),
            "waiting for the answer",
        )
    assert "(the create, attempt 1)" in text


@pytest.mark.parametrize("command", ["status", "wait"])
async def test_polling_commands_say_what_they_wait_for_and_the_attempt(command: str) -> None:
    """`status`/`wait`: after a 500 and a silent retry, stderr names the poll and attempt 2."""
    answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with silent_server(first_answer=answer) as url:
        text = await stderr_until(
            [command, "task-7"], env_for(url), "(a poll of task task-7, attempt 2)"
        )
    assert f"waiting for the answer to POST {url}/api/v1/image/nano-banana/result" in text


async def test_retries_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """A retried poll is logged at INFO (not only DEBUG) on the `nanobanana_async` logger."""
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    async with Emulator(speed=1000, image_downscale=8) as emu:
        emu.faults.inject(Fault.status(500), endpoint="result", times=1)
        retry = nb.RetryPolicy(sleep=False)
        async with nb.Client(
            emu.api_key, base_url=emu.base_url, poll=nb.PollPolicy(speed=1000), retry=retry
        ) as client:
            await client.generate("a banana cat")
    retries = [
        r for r in caplog.records if r.levelno == logging.INFO and "retrying" in r.getMessage()
    ]
    assert retries, [r.getMessage() for r in caplog.records]
    assert "attempt 2" in retries[0].getMessage()


async def test_status_shows_its_retries(tmp_path: Path) -> None:
    """`status` shows a retried poll on stderr (it has no live display to show it)."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        async with nb.Client(
            emu.api_key, base_url=emu.base_url, poll=nb.PollPolicy(speed=1000)
        ) as client:
            task = await client.submit("a cat")
            await task
        emu.faults.inject(Fault.status(500), endpoint="result", times=1)
        process = await anyio.run_process(
            [*COMMAND, "status", task.id], env=cli_env(emu), check=False
        )
    assert process.returncode == 0, process.stderr.decode()
    assert "retrying" in process.stderr.decode()


@pytest.mark.parametrize("endpoint", ["create", "result"])
async def test_a_429_pause_is_logged_at_info(
    endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 with Retry-After on a create or a poll is logged at INFO, naming it and attempt 2."""
    caplog.set_level(logging.INFO, logger="nanobanana_async")
    async with Emulator(speed=1000, image_downscale=8) as emu:
        fault = emu.faults.inject(Fault.rate_limit(retry_after=0.2), endpoint=endpoint, times=1)
        retry = nb.RetryPolicy(sleep=False)
        async with nb.Client(
            emu.api_key, base_url=emu.base_url, poll=nb.PollPolicy(speed=1000), retry=retry
        ) as client:
            await client.generate("a banana cat")
        assert fault.fired == 1
    pauses = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and "retrying" in r.getMessage() and "429" in r.getMessage()
    ]
    assert len(pauses) == 1, [r.getMessage() for r in caplog.records]
    assert "attempt 2" in pauses[0]


async def test_status_shows_a_429_pause(tmp_path: Path) -> None:
    """`status` answered 429 with Retry-After says on stderr that every request waits, and why."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        async with nb.Client(
            emu.api_key, base_url=emu.base_url, poll=nb.PollPolicy(speed=1000)
        ) as client:
            task = await client.submit("a cat")
            await task
        emu.faults.inject(Fault.rate_limit(retry_after=0.2), endpoint="result", times=1)
        process = await anyio.run_process(
            [*COMMAND, "status", task.id], env=cli_env(emu), check=False
        )
    stderr = process.stderr.decode()
    assert process.returncode == 0, stderr
    assert "rate limited: every request waits" in stderr
    assert "HTTP 429" in stderr
