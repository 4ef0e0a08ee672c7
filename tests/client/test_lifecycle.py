"""The client's life: closing, event loops, and a caller-provided aiohttp session."""

from __future__ import annotations

import asyncio

import aiohttp
import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

from ._helpers import emulator, make_client

pytestmark = pytest.mark.anyio


async def test_a_closed_client_refuses_use(emu: Emulator) -> None:
    """After aclose() every method raises ClientClosedError and nothing is sent."""
    client = make_client(emu)
    async with client:
        pass
    assert client.closed
    assert "closed=True" in repr(client)
    with pytest.raises(nb.errors.ClientClosedError):
        await client.submit("a banana cat")
    with pytest.raises(nb.errors.ClientClosedError):
        await client.generate("a banana cat")
    with pytest.raises(nb.errors.ClientClosedError):
        await client.get("3-some-task")
    with pytest.raises(nb.errors.ClientClosedError):
        client.task("3-some-task")
    with pytest.raises(nb.errors.ClientClosedError):
        await client.map(["a banana cat"])
    with pytest.raises(nb.errors.ClientClosedError):
        async for _ in client.as_completed(["a banana cat"]):
            pass
    with pytest.raises(nb.errors.ClientClosedError):
        await client.download(nb.GeneratedImage(url=f"{emu.base_url}/files/x/0.png"))
    with pytest.raises(nb.errors.ClientClosedError):
        async with client:
            pass
    assert emu.requests == []
    await client.aclose()  # closing twice is harmless
    assert issubclass(nb.errors.ClientClosedError, nb.errors.ClientStateError)


async def test_close_wakes_waiters_and_iterators_with_client_closed_error() -> None:
    """Closing the client wakes every waiter and updates() loop with ClientClosedError."""
    async with emulator(duration=1e6) as emu:
        client = make_client(emu)
        task = await client.submit("never ends")
        woken: list[BaseException] = []

        async def wait() -> None:
            try:
                await task.wait()
            except nb.errors.ClientClosedError as exc:
                woken.append(exc)

        async def follow() -> None:
            try:
                async for _ in task.updates():
                    pass
            except nb.errors.ClientClosedError as exc:
                woken.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            group.start_soon(wait)
            group.start_soon(follow)
            await anyio.wait_all_tasks_blocked()
            assert woken == []
            await client.aclose()
        assert len(woken) == 3
        assert all(task.id in str(exc) for exc in woken)
        assert task.done()
        assert client.in_flight == 0
        assert client.limiter.in_flight == 0  # type: ignore[attr-defined]
        with pytest.raises(nb.errors.ClientClosedError):
            await task


def test_a_second_event_loop_gets_client_state_error() -> None:
    """A client used in one event loop raises ClientStateError when used from another."""
    client = nb.Client("sk-test", base_url="http://127.0.0.1:9")

    async def first() -> list[nb.TaskResult]:
        return await client.map([])

    async def second() -> None:
        with pytest.raises(nb.errors.ClientStateError) as info:
            await client.get("3-some-task")
        assert not isinstance(info.value, nb.errors.ClientClosedError)
        assert isinstance(info.value, RuntimeError)
        assert "event loop" in str(info.value)
        with pytest.raises(nb.errors.ClientStateError):
            await client.submit("a banana cat")
        with pytest.raises(nb.errors.ClientStateError):
            client.task("3-some-task")

    assert anyio.run(first) == []
    asyncio.run(second())


async def test_a_caller_session_is_left_open(emu: Emulator) -> None:
    """A caller-provided aiohttp session is used and is still open after the client closes."""
    async with aiohttp.ClientSession() as session:
        async with make_client(emu, session=session) as client:
            result = await client.generate("a banana cat")
            data = await result.images[0].read()
        assert client.closed
        assert not session.closed
        async with session.get(result.images[0].url) as response:
            assert response.status == 200
            assert await response.read() == data


async def test_closing_leaves_no_background_task(emu: Emulator) -> None:
    """After aclose() no asyncio task of the client is left running."""
    before = asyncio.all_tasks()
    async with make_client(emu) as client:
        tasks = [await client.submit(f"p{i}") for i in range(3)]
        await tasks[0]
    leftover = [
        task
        for task in asyncio.all_tasks() - before
        # The emulator's own connection handlers may still be winding down; they are not ours.
        if "aiohttp/web_" not in task.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    ]
    assert leftover == []
