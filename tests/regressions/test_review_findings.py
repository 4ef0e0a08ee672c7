"""Regressions of the review findings: each test failed before its fix and must keep passing.

Every test talks real HTTP to the Emulator. Where the emulator lacks a behaviour of the real
service (a poll answer carrying ``credits_cost``, a download that stalls mid-body), an aiohttp
middleware is added to the emulator's own application before it starts.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.typedefs import Middleware

import nanobanana_async as nb
from nanobanana_async._wire import RESULT_PATH
from nanobanana_async.testing import Emulator, Fault, RequestRecord
from nanobanana_async.testing import _emulator as emulator_module
from nanobanana_async.testing._png import render_png

pytestmark = pytest.mark.anyio

#: Speed of the emulators: a 15 s generation takes 15 ms.
SPEED = 1000.0
#: Emulated seconds that keep a task running for the whole test.
FOREVER = 100_000.0
FAST = "nano-banana-fast"
#: Bound of a wait that only guards against a hang: generous for a loaded machine.
WAIT = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_for(emu: Emulator, **options: Any) -> nb.Client:
    """Return a client of *emu* polling at its speed, without backoff sleeps by default."""
    options.setdefault("poll", nb.PollPolicy(speed=SPEED))
    options.setdefault("retry", nb.RetryPolicy(sleep=False))
    return nb.Client(emu.api_key, base_url=emu.base_url, **options)


async def wait_for(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait (checking every millisecond) until ``condition()`` holds; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        await anyio.sleep(0.001)


def records(emu: Emulator, endpoint: str) -> list[RequestRecord]:
    """Return the requests *emu* received on *endpoint*, in order of arrival."""
    return [record for record in emu.requests if record.endpoint == endpoint]


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect what reaches the loop's exception handler (e.g. "Task exception was never ...")."""
    loop = asyncio.get_running_loop()
    caught: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: caught.append(context))
    try:
        yield caught
        gc.collect()
    finally:
        loop.set_exception_handler(previous)


def package_tasks_alive(module: str = "nanobanana_async") -> list[asyncio.Task[Any]]:
    """Return the unfinished asyncio tasks running a coroutine of the client package."""
    alive = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if not task.done() and module in filename and "testing" not in filename:
            alive.append(task)
    return alive


def no_resource_warning() -> list[str]:
    """Collect garbage and return the messages of the ResourceWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@asynccontextmanager
async def emulator_with(middleware: Middleware, **options: Any) -> AsyncIterator[Emulator]:
    """Start an emulator whose application runs *middleware* around every endpoint."""
    emu = Emulator(speed=SPEED, image_downscale=8, **options)
    emu.app.middlewares.append(web.middleware(middleware))
    async with emu:
        yield emu


class BreakableLimiter(nb.Limiter):
    """The in-process limiter, whose `ready()` raises once `broken` is set (a store gone down)."""

    broken = False

    async def ready(self, kind: nb.limiters.RequestKind = "create") -> None:
        if self.broken:
            raise RuntimeError("limiter store unreachable")
        await super().ready()


class CountingLimiter(nb.Limiter):
    """The in-process limiter, counting the slots it handed out (one per create started)."""

    acquired = 0

    async def acquire(self) -> nb.limiters.Lease:
        lease = await super().acquire()
        self.acquired += 1
        return lease


class StoreLimiter(nb.limiters.BaseLimiter):
    """A limiter whose release awaits a round trip, as a shared store's (Redis) does."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self._count = itertools.count(1)

    async def acquire(self) -> nb.limiters.Lease:
        token = str(next(self._count))
        self.held.add(token)
        return nb.limiters.Lease(token)

    async def release(self, lease: nb.limiters.Lease) -> None:
        await asyncio.sleep(0.01)
        self.held.discard(lease.token)

    async def pause(self, seconds: float) -> None:
        pass

    async def ready(self, kind: nb.limiters.RequestKind = "create") -> None:
        pass


# --- 1. a crash while polling never orphans a task -------------------------------------------


async def test_raising_retry_hook_does_not_orphan_the_task() -> None:
    """A RetryPolicy.on_retry hook that raises leaves the task completing and its slot released."""
    calls: list[nb.events.RetryEvent] = []

    def broken_hook(event: nb.events.RetryEvent) -> None:
        calls.append(event)
        raise RuntimeError("bug in the hook")

    with loop_errors() as errors:
        async with Emulator(speed=SPEED, image_downscale=8) as emu:
            limiter = nb.Limiter(max_concurrency=2)
            retry = nb.RetryPolicy(sleep=False, on_retry=broken_hook)
            async with client_for(emu, retry=retry, limiter=limiter) as client:
                emu.faults.inject(Fault.status(500), endpoint="result", times=1)
                task = await client.submit("a cat", model=FAST)
                result = await task.wait(timeout=WAIT)
                assert result.task_id == task.id
                assert [event.endpoint for event in calls] == ["result"]
                await wait_for(lambda: limiter.in_flight == 0)
                assert client.in_flight == 0
    assert not errors, errors


async def test_unexpected_error_while_polling_ends_the_task() -> None:
    """An unexpected error in the poll handler (a limiter failing) ends the task and frees it."""
    with loop_errors() as errors:
        async with Emulator(speed=SPEED, image_downscale=8) as emu:
            limiter = BreakableLimiter(max_concurrency=2)
            async with client_for(emu, limiter=limiter) as client:
                task = await client.submit("a cat", model=FAST)
                limiter.broken = True
                with pytest.raises(RuntimeError, match="limiter store unreachable"):
                    await task.wait(timeout=WAIT)
                assert task.done()
                await wait_for(lambda: limiter.in_flight == 0)
                assert client.in_flight == 0
    assert not errors, errors


# --- 2. a Retry-After pause holds back requests already queued for a connection ---------------


async def test_retry_after_pause_holds_back_requests_queued_for_a_connection() -> None:
    """After a 429 with Retry-After, no request leaves during the pause, queued ones included."""
    pause = 0.3
    async with Emulator(speed=SPEED, image_downscale=8, duration=FOREVER) as emu:
        async with client_for(emu) as other:
            task_id = (await other.submit("a cat", model=FAST)).id
        async with client_for(emu, max_connections=1) as client:
            emu.faults.inject(Fault.rate_limit(retry_after=pause), endpoint="result", times=1)
            snapshots = await asyncio.gather(*(client.get(task_id) for _ in range(3)))
        assert [snapshot.id for snapshot in snapshots] == [task_id] * 3
        polls = records(emu, "result")
        assert [record.status for record in polls] == [429, 200, 200, 200]
        limited = polls[0].real_time
        gaps = [round(record.real_time - limited, 3) for record in polls[1:]]
        assert all(gap >= pause - 0.005 for gap in gaps), gaps


# --- 3. polls are retried on any 5xx -----------------------------------------------------------


@pytest.mark.parametrize("fault", [Fault.html(524), Fault.status(520)], ids=["html-524", "520"])
async def test_poll_is_retried_on_any_5xx(fault: Fault) -> None:
    """A poll answered by any 5xx (Cloudflare's 520/524 too) is retried and the task succeeds."""
    async with Emulator(speed=SPEED, image_downscale=8, duration=50) as emu:
        async with client_for(emu) as client:
            task = await client.submit("a cat", model=FAST)
            handle = emu.faults.inject(fault, endpoint="result", times=1)
            result = await task.wait(timeout=WAIT)
        assert handle.fired == 1
        assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
        assert fault.http_status in [record.status for record in records(emu, "result")]


# --- 4. downloads and creates do not compete for the API's connection slots --------------------


async def test_hanging_download_does_not_time_out_a_create() -> None:
    """A download hanging on the file endpoint does not make a create time out or turn uncertain."""
    async with Emulator(speed=SPEED, image_downscale=8) as emu:
        # Long enough for any answer on a loaded machine; a create stuck behind the download
        # for a connection would still time out (and turn uncertain) after it.
        timeouts = nb.Timeouts(request=2.0)
        async with client_for(emu, max_connections=1, timeouts=timeouts) as client:
            first = await client.generate("a cat", model=FAST)
            emu.faults.inject(Fault.hang(), endpoint="file")
            download = asyncio.ensure_future(first.images[0].read())
            try:
                await wait_for(lambda: any(r.fault == "hang" for r in records(emu, "file")))
                task = await client.submit("another cat", model=FAST)
                second = await task.wait(timeout=WAIT)
                assert second.snapshot.status is nb.TaskStatus.SUCCEEDED
                assert emu.ledger.creates_received == 2
                assert first.credits_cost is not None
                assert client.credits.charged == 2 * first.credits_cost
                assert not download.done()
            finally:
                download.cancel()
                await asyncio.gather(download, return_exceptions=True)


async def test_aclose_during_queued_create_does_not_count_it_charged() -> None:
    """aclose() while a create still waits for a connection slot counts none of its credits."""
    async with Emulator(speed=SPEED, image_downscale=8, duration=FOREVER) as emu:
        client = client_for(emu, max_connections=1)
        try:
            first = await client.submit("a", model=FAST)
            emu.faults.inject(Fault.hang(), endpoint="result")
            # The only connection slot is now held by a poll that never gets an answer.
            await wait_for(lambda: any(r.fault == "hang" for r in records(emu, "result")))
            pending = asyncio.ensure_future(client.submit("b", model=FAST))
            # The create attempt starts as a background job, then queues for the slot.
            for _ in range(20):
                await asyncio.sleep(0)
            assert not pending.done()
        finally:
            await client.aclose()
        with pytest.raises(nb.NanoBananaError):
            await pending
        assert emu.ledger.creates_received == 1
        assert client.credits.charged == first.credits_cost
        assert client.credits.reserved == 0


# --- 5. a cancelled batch still journals the task ids of creates on the wire -------------------


async def test_cancelled_batch_journals_task_ids_of_creates_in_flight(tmp_path: Path) -> None:
    """A batch cancelled while its creates are on the wire still journals each created task id."""
    async with Emulator(speed=SPEED, image_downscale=8, duration=FOREVER) as emu:
        delayed = emu.faults.inject(Fault.delay(0.2), endpoint="create")
        async with client_for(emu) as client:
            batch = nb.Batch(client, ["p0", "p1", "p2"], tmp_path)
            job = asyncio.ensure_future(batch.run())
            await wait_for(lambda: delayed.fired == 3)
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
            await wait_for(lambda: emu.ledger.tasks_created == 3)
            journal = tmp_path / "journal.jsonl"

            def running_ids() -> set[str]:
                lines = journal.read_text(encoding="utf-8").splitlines()
                states = [json.loads(line) for line in lines]
                return {s["task_id"] for s in states if s["state"] == "running" and s["task_id"]}

            await wait_for(lambda: len(running_ids()) == 3)
            assert running_ids() == set(emu.tasks)


# --- 6. map() stops submitting once it raised -------------------------------------------------


async def test_map_stops_submitting_after_it_raised() -> None:
    """Once map() raised the first error, nothing of the fan-out runs and no create starts."""
    async with Emulator(speed=SPEED, image_downscale=8, failure_rate=1.0) as emu:
        limiter = CountingLimiter(max_concurrency=2)
        async with client_for(emu, limiter=limiter) as client:
            with pytest.raises(nb.TaskFailedError) as raised:
                await client.map(f"p{i}" for i in range(1000))
            # Checked before any other await: the fan-out must be stopped by the time map() raises.
            assert package_tasks_alive("_fanout.py") == []
            started = limiter.acquired
            # The error (and so its traceback's frames) stays alive, as in a report or a log.
            assert raised.value.task_id is not None
            await wait_for(lambda: client.in_flight == 0 and limiter.in_flight == 0)
            assert limiter.acquired == started
            # A slot taken just as map() raised may have stopped its create before any byte.
            assert emu.ledger.creates_received <= started
            assert started <= 2 * 2  # the fan-out window of max_concurrency=2


# --- 7. a non-seekable stream is a valid reference -------------------------------------------


async def test_non_seekable_stream_reference_is_sent_with_its_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read end of a pipe works as a reference image and reaches the server with its bytes."""
    uploads: list[int] = []
    read_form = emulator_module._read_create_form

    async def spy(request: web.Request) -> Any:
        form = await read_form(request)
        uploads.extend(upload.size for upload in form.uploads)
        return form

    monkeypatch.setattr(emulator_module, "_read_create_form", spy)
    png = render_png(16, 16, b"reference")
    read_end, write_end = os.pipe()
    os.write(write_end, png)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stream:
        assert not stream.seekable()
        request = nb.GenerationRequest(prompt="like this", model=FAST, images=[stream])
        async with Emulator(speed=SPEED, image_downscale=8) as emu:
            async with client_for(emu) as client:
                task = await client.submit(request)
            assert emu.tasks[task.id].reference_count == 1
    assert uploads == [len(png)]


# --- 8. aclose() waits for an async limiter's releases -----------------------------------------


async def test_aclose_leaves_no_task_behind_with_an_async_release() -> None:
    """With a limiter whose release awaits, aclose() returns with all released and no task left."""
    async with Emulator(speed=SPEED, image_downscale=8, duration=FOREVER) as emu:
        limiter = StoreLimiter()
        client = client_for(emu, limiter=limiter)
        try:
            for i in range(3):
                await client.submit(f"p{i}", model=FAST)
            assert len(limiter.held) == 3
        finally:
            await client.aclose()
        assert limiter.held == set()
        assert not package_tasks_alive(), package_tasks_alive()


# --- 9. nothing reopens a closed client --------------------------------------------------------


async def test_reading_an_image_after_aclose_raises_and_opens_no_session(tmp_path: Path) -> None:
    """After aclose(), reading or saving an image raises ClientClosedError and opens no session."""
    async with Emulator(speed=SPEED, image_downscale=8) as emu:
        async with client_for(emu) as client:
            result = await client.generate("a cat", model=FAST)
        image = result.images[0]
        with pytest.raises(nb.errors.ClientClosedError):
            await image.read()
        with pytest.raises(nb.errors.ClientClosedError):
            await image.save(tmp_path / "cat")
        assert client._transport._session is None
        assert os.listdir(tmp_path) == []
    del client, result, image
    assert no_resource_warning() == []


# --- 10. a task due at its deadline is polled once more ---------------------------------------


async def test_task_due_at_its_deadline_is_polled_once_more() -> None:
    """A task whose poll comes due at its deadline is polled; if it succeeded, wait() returns it."""
    async with Emulator(speed=SPEED, image_downscale=8, duration=0) as emu:
        # The first poll (0.1 s away) is clamped to the deadline (0.05 s); the task has ended by
        # then whatever the load, since it ends as it is created.
        poll = nb.PollPolicy(speed=SPEED, initial_delay=100)
        async with client_for(emu, poll=poll, timeouts=nb.Timeouts(task=0.05)) as client:
            task = await client.submit("a cat", model=FAST)
            result = await task.wait(timeout=WAIT)
        assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
        assert emu.ledger.polls_received == 1


# --- 11. attached tasks refund nothing ---------------------------------------------------------


async def test_attached_failed_task_adds_no_refund() -> None:
    """A task attached with client.task(id) that fails adds nothing to client.credits.refunded."""
    rewritten = 0

    async def poll_carries_cost(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The real API's poll answer has the create's shape, credits_cost included.
        nonlocal rewritten
        response = await handler(request)
        if request.path != RESULT_PATH or not isinstance(response, web.Response):
            return response
        assert isinstance(response.body, bytes)
        payload = json.loads(response.body)
        data = payload.get("data") if isinstance(payload, dict) else None
        if response.status != 200 or not isinstance(data, dict):
            return response
        data["credits_cost"] = emu.tasks[data["id"]].credits_cost
        rewritten += 1
        return web.json_response(payload, status=response.status)

    async with emulator_with(poll_carries_cost, failure_rate=1.0) as emu:
        async with client_for(emu) as other:
            task_id = (await other.submit("a cat", model="nano-banana-pro")).id
        async with client_for(emu, max_credits=40) as client:
            task = client.task(task_id)
            with pytest.raises(nb.TaskFailedError):
                await task.wait(timeout=WAIT)
            usage = client.credits
        assert rewritten >= 1
        assert emu.tasks[task_id].credits_cost > 0
        assert (usage.charged, usage.refunded) == (0, 0)
        assert usage.remaining == 40


# --- 12. a cancelled save leaves no temporary file ---------------------------------------------


async def test_cancelled_save_leaves_no_part_file(tmp_path: Path) -> None:
    """A save() cancelled mid-download leaves no .part file behind."""
    release = asyncio.Event()

    async def stall_downloads(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Sends the image's first bytes, then nothing until the test is over; then drops the
        # connection (a handler cancelled is how aiohttp closes one without an answer).
        response = await handler(request)
        if not request.path.startswith("/files/") or not isinstance(response, web.Response):
            return response
        body = response.body
        assert isinstance(body, bytes)
        stream = web.StreamResponse(headers={"Content-Type": "image/png"})
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(body[:64])
        await release.wait()
        raise asyncio.CancelledError

    async with emulator_with(stall_downloads) as emu:
        async with client_for(emu) as client:
            result = await client.generate("a cat", model=FAST)
            out = tmp_path / "out"
            out.mkdir()
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(result.images[0].save, out / "cat")
                    await wait_for(lambda: any(out.glob("*.part")))
                    group.cancel_scope.cancel()
                assert list(out.iterdir()) == []
            finally:
                release.set()


# --- 13. a 429 without Retry-After pauses the key for the backoff cap ------------------------


async def test_rate_limit_without_hint_pauses_the_key_for_the_backoff_cap() -> None:
    """A 429 without Retry-After pauses every request of the key for that attempt's backoff cap."""
    cap = 0.4
    async with Emulator(speed=SPEED, image_downscale=8, duration=FOREVER) as emu:
        async with client_for(emu) as other:
            task_id = (await other.submit("a cat", model=FAST)).id
        # Seed 31 draws 0.012 first: a jittered pause would be about 5 ms.
        retry = nb.RetryPolicy(initial_backoff=cap, max_backoff=cap, jitter=True)
        async with client_for(emu, retry=retry, seed=31) as client:
            paused = asyncio.Event()
            events: list[nb.events.RetryEvent] = []

            def listener(event: nb.events.RetryEvent) -> None:
                events.append(event)
                paused.set()

            client.add_retry_listener(listener)
            emu.faults.inject(Fault.rate_limit(retry_after=None), endpoint="result", times=1)
            limited = asyncio.ensure_future(client.get(task_id))
            await paused.wait()
            # Another request of the key, started once the pause is in force.
            probe = await client.get(task_id)
            await limited
        assert probe.id == task_id
        polls = records(emu, "result")
        assert [record.status for record in polls] == [429, 200, 200]
        gaps = [round(record.real_time - polls[0].real_time, 3) for record in polls[1:]]
        assert all(gap >= cap - 0.005 for gap in gaps), gaps
        assert [event.wait for event in events] == [cap]
