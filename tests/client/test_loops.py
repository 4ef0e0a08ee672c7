"""Event loops, first steps and attached tasks: clear errors instead of hangs or tracebacks."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import warnings
from collections.abc import Iterator

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

SPEED = 1000.0


def _fast(emu: Emulator, **options: object) -> nb.Client:
    return nb.Client(
        emu.api_key,
        base_url=emu.base_url,
        poll=nb.PollPolicy(speed=SPEED),
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def other_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


@pytest.mark.anyio
async def test_awaiting_a_task_from_another_loop_is_refused(
    other_loop: asyncio.AbstractEventLoop,
) -> None:
    """A Task awaited outside its client's event loop raises ClientStateError, never hangs."""

    async def start() -> tuple[Emulator, nb.Client, nb.Task]:
        emu = Emulator(speed=SPEED, duration=100_000.0)
        await emu.__aenter__()
        client = _fast(emu)
        return emu, client, await client.submit("elsewhere")

    emu, client, task = asyncio.run_coroutine_threadsafe(start(), other_loop).result(30)
    try:
        with anyio.fail_after(10), pytest.raises(nb.errors.ClientStateError) as info:
            await task.wait()
        assert "event loop" in str(info.value)
        with anyio.fail_after(10), pytest.raises(nb.errors.ClientStateError):
            async for _ in task.updates():
                pass
    finally:

        async def stop() -> None:
            await client.aclose()
            await emu.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(stop(), other_loop).result(30)


def test_under_trio_the_client_says_it_needs_asyncio() -> None:
    """Using the client under trio raises ClientStateError naming asyncio, not RuntimeError."""
    pytest.importorskip("trio")

    async def main() -> None:
        async with nb.Client("sk-test", base_url="http://127.0.0.1:9"):
            pass

    with pytest.raises(nb.errors.ClientStateError) as info:
        anyio.run(main, backend="trio")
    assert "asyncio" in str(info.value)


def test_aclose_from_a_later_asyncio_run_is_clean() -> None:
    """A client left open when its loop ended closes cleanly from a later asyncio.run."""
    state: dict[str, nb.Client] = {}

    async def first() -> None:
        async with Emulator(speed=SPEED) as emu:
            client = state["client"] = _fast(emu)
            await client.generate("then the loop ends")

    async def second() -> None:
        await state["client"].aclose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(first())
        asyncio.run(second())
        gc.collect()
    assert state["client"].closed
    assert [str(w.message) for w in caught] == []


def test_a_sync_with_says_to_use_async_with() -> None:
    """`with nb.Client()` raises a TypeError that says to use `async with`."""
    client = nb.Client("sk-test", base_url="http://127.0.0.1:9")
    with pytest.raises(TypeError, match="async with"), client:
        pass


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.anyio
async def test_a_url_where_nothing_listens_fails_fast_naming_it() -> None:
    """Connection refused on a client that never connected ends after 3 tries, naming the URL."""
    url = f"http://127.0.0.1:{_closed_port()}"
    retries: list[nb.events.RetryEvent] = []
    policy = nb.RetryPolicy(initial_backoff=0.01, jitter=False, on_retry=retries.append)
    async with nb.Client("sk-test", base_url=url, retry=policy, max_credits=100) as client:
        with pytest.raises(nb.TransportError) as info:
            await client.submit("anyone there?")
        assert client.credits.charged == 0
        assert client.credits.reserved == 0
    assert url in str(info.value)
    assert len(retries) == 2


@pytest.mark.anyio
async def test_an_attached_task_does_not_pretend_before_its_first_poll() -> None:
    """client.task(id) says UNKNOWN until polled, then the truth (done, or not found)."""
    async with Emulator(speed=SPEED) as emu:
        async with _fast(emu) as owner:
            done = await owner.generate("finished elsewhere")
        async with _fast(emu) as client:
            task = client.task(done.task_id)
            assert task.snapshot.status is nb.TaskStatus.UNKNOWN
            assert not task.snapshot.is_terminal
            result = await task.wait()
            assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
            assert len(result.images) == len(done.images)
            missing = client.task("3-00000000-0000-0000-0000-000000000000")
            assert missing.snapshot.status is nb.TaskStatus.UNKNOWN
            with pytest.raises(nb.errors.NotFoundError) as info:
                await missing.wait()
            assert info.value.task_id == missing.id


@pytest.mark.anyio
async def test_the_web_app_pattern_submit_here_report_there() -> None:
    """One request submits and returns the id; another reports status with client.get(id)."""
    async with Emulator(speed=SPEED) as emu, _fast(emu) as client:

        async def create_handler(prompt: str) -> str:
            return (await client.submit(prompt)).id

        async def status_handler(task_id: str) -> dict[str, object]:
            snap = await client.get(task_id)
            return {"status": snap.status.value, "progress": snap.progress}

        task_id = await create_handler("a banana cat")
        await client.task(task_id).wait()
        assert await status_handler(task_id) == {"status": "succeeded", "progress": 100}


def test_the_poll_speed_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """$NANOBANANA_POLL_SPEED sets PollPolicy.speed by default; a bad value names the variable."""
    monkeypatch.setenv("NANOBANANA_POLL_SPEED", "50")
    assert nb.Client("sk-test").poll_policy.speed == 50.0
    assert nb.Client("sk-test", poll=nb.PollPolicy()).poll_policy.speed == 1.0
    monkeypatch.setenv("NANOBANANA_POLL_SPEED", "fast")
    with pytest.raises(nb.InvalidRequestError) as info:
        nb.Client("sk-test")
    assert info.value.field == "NANOBANANA_POLL_SPEED"
