"""Submitting, generating, attaching, polling once and fanning out, against the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

from ._helpers import emulator, held_emulator, make_client

pytestmark = pytest.mark.anyio


async def test_submit_returns_a_running_task_known_to_the_server(
    emu: Emulator, client: nb.Client
) -> None:
    """submit() returns a Task whose id is the server's, with the create's running snapshot."""
    task = await client.submit("a banana cat", model="nano-banana-fast", aspect_ratio="16:9")

    assert isinstance(task, nb.Task)
    assert task.id in emu.tasks
    assert task.snapshot.id == task.id
    assert task.snapshot.status is nb.TaskStatus.RUNNING
    assert task.snapshot.credits_cost == 5
    emulated = emu.tasks[task.id]
    assert (emulated.model, emulated.aspect_ratio, emulated.mode) == (
        "nano-banana-fast",
        "16:9",
        "text-to-image",
    )
    result = await task.wait()
    assert result.task_id == task.id
    assert task.done()


async def test_submit_accepts_a_generation_request(emu: Emulator, client: nb.Client) -> None:
    """submit() takes a prebuilt GenerationRequest and sends its fields as given."""
    request = nb.GenerationRequest(prompt="a pear", model="nano-banana-pro", image_size="2K")
    task = await client.submit(request)

    creates = [r for r in emu.requests if r.endpoint == "create"]
    assert len(creates) == 1
    assert creates[0].fields == {
        "prompt": "a pear",
        "model": "nano-banana-pro",
        "mode": "text-to-image",
        "aspectRatio": "auto",
        "imageSize": "2K",
    }
    assert (await task).credits_cost == 20


async def test_generate_returns_the_result_with_its_images(
    emu: Emulator, client: nb.Client
) -> None:
    """generate() submits and waits: the result holds the image URL, the prompt and the cost."""
    result = await client.generate("a banana cat", model="nano-banana")

    assert isinstance(result, nb.TaskResult)
    assert len(result.images) == 1
    assert result.images[0].url == f"{emu.base_url}/files/{result.task_id}/0.png"
    assert result.images[0].content == "a banana cat"
    assert result.snapshot.status is nb.TaskStatus.SUCCEEDED
    assert result.snapshot.progress == 100
    assert result.credits_cost == 15
    assert client.credits.charged == 15
    assert client.credits.spent == 15
    assert client.credits.reserved == 0
    assert emu.ledger.credits_charged == 15
    assert client.in_flight == 0


async def test_task_attaches_by_id_from_a_second_client(emu: Emulator) -> None:
    """A second client (another web request) attaches by id with task() and gets the result."""
    async with make_client(emu) as submitter:
        task_id = (await submitter.submit("a banana cat")).id
    async with make_client(emu) as follower:
        attached = follower.task(task_id)
        assert attached.id == task_id
        assert not attached.done()
        assert follower.in_flight == 1
        assert follower.limiter.in_flight == 0  # type: ignore[attr-defined]
        result = await attached.wait()
        assert follower.in_flight == 0
        # Attaching again after the end polls the task afresh and sees the same result.
        again = await follower.task(task_id)
    assert result.task_id == task_id
    assert result.images[0].content == "a banana cat"
    assert again.images == result.images
    assert emu.ledger.tasks_created == 1


async def test_task_returns_the_same_task_while_it_is_tracked(client: nb.Client) -> None:
    """task(id) of a task this client tracks is that very task, not a second tracker."""
    task = await client.submit("a banana cat")
    assert client.task(task.id) == task
    assert client.in_flight == 1
    await task


async def test_get_polls_once_and_tracks_nothing(emu: Emulator, client: nb.Client) -> None:
    """get() returns one snapshot from one result request and leaves nothing tracked."""
    async with make_client(emu) as other:
        task_id = (await other.submit("a banana cat")).id
        await other.task(task_id).wait()
    polls_before = emu.ledger.polls_received

    snapshot = await client.get(task_id)

    assert isinstance(snapshot, nb.TaskSnapshot)
    assert snapshot.id == task_id
    assert snapshot.status is nb.TaskStatus.SUCCEEDED
    assert snapshot.results[0].content == "a banana cat"
    assert emu.ledger.polls_received == polls_before + 1
    assert client.in_flight == 0
    assert await snapshot.results[0].read()


async def test_download_returns_bytes_or_the_path_written(
    client: nb.Client, tmp_path: Path
) -> None:
    """client.download() gives the PNG's bytes, or writes it and returns the path."""
    result = await client.generate("a banana cat")
    data = await client.download(result.images[0])
    written = await client.download(result.images[0], tmp_path / "cat")

    assert isinstance(data, bytes)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert written == tmp_path / "cat.png"
    assert isinstance(written, Path)
    assert written.read_bytes() == data


async def test_map_returns_results_in_input_order(emu: Emulator, client: nb.Client) -> None:
    """map() returns one result per request, in input order, whatever order they finished in."""
    prompts = [f"prompt {i}" for i in range(6)]
    requests: list[str | nb.GenerationRequest] = [
        nb.GenerationRequest(prompt=p, model="nano-banana-pro" if i % 2 else "nano-banana-fast")
        for i, p in enumerate(prompts)
    ]

    results = await client.map(requests)

    assert [r.images[0].content for r in results] == prompts
    assert [r.credits_cost for r in results] == [5, 20, 5, 20, 5, 20]
    assert len({r.task_id for r in results}) == 6
    assert emu.ledger.tasks_created == 6
    assert client.in_flight == 0


async def test_map_with_return_exceptions_keeps_each_error_in_its_place(
    emu: Emulator, client: nb.Client
) -> None:
    """map(return_exceptions=True) puts each failed request's error at its index."""
    results = await client.map(["one", "   ", "three"], return_exceptions=True)

    assert isinstance(results[0], nb.TaskResult)
    assert isinstance(results[1], nb.InvalidRequestError)
    assert results[1].field == "prompt"
    assert isinstance(results[2], nb.TaskResult)
    assert results[2].images[0].content == "three"
    assert emu.ledger.tasks_created == 2


async def test_map_raises_the_first_error_by_default(client: nb.Client) -> None:
    """map() without return_exceptions raises a request's error."""
    with pytest.raises(nb.InvalidRequestError) as info:
        await client.map(["fine", ""])
    assert info.value.field == "prompt"


async def test_map_raises_task_failed_error_for_a_failed_task() -> None:
    """map() raises TaskFailedError when a task fails, and returns it in place when asked."""
    async with emulator(failure_rate=1.0) as emu, make_client(emu) as client:
        with pytest.raises(nb.TaskFailedError):
            await client.map(["doomed"])
        results = await client.map(["doomed too"], return_exceptions=True)
    assert isinstance(results[0], nb.TaskFailedError)


async def test_as_completed_yields_every_task_once_terminal(
    emu: Emulator, client: nb.Client
) -> None:
    """as_completed() yields each submitted task exactly once, each already terminal."""
    seen = [task async for task in client.as_completed(f"p{i}" for i in range(10))]

    assert len(seen) == 10
    assert all(task.done() for task in seen)
    assert {task.id for task in seen} == set(emu.tasks)
    contents = sorted([(await task).images[0].content or "" for task in seen])
    assert contents == sorted(f"p{i}" for i in range(10))


async def test_as_completed_yields_in_finishing_order() -> None:
    """as_completed() yields a quick task before a slow one submitted earlier."""
    # The emulator holds both running; the test lets the quick one (submitted second) end
    # first, and the slow one only once the quick one has been yielded.
    async with held_emulator() as (emu, hold), make_client(emu) as client:
        requests = [
            nb.GenerationRequest(prompt="slow", model="nano-banana-pro", image_size="4K"),
            nb.GenerationRequest(prompt="quick", model="nano-banana-fast"),
        ]
        order: list[str | None] = []

        hold.release(lambda task_id: emu.tasks[task_id].prompt == "quick")
        async for task in client.as_completed(requests):
            order.append((await task).images[0].content)
            hold.release()  # now the slow one may end too
    assert order == ["quick", "slow"]


async def test_as_completed_yields_failed_tasks_too() -> None:
    """as_completed() yields failed tasks; awaiting one raises TaskFailedError."""
    async with emulator(failure_rate=1.0) as emu, make_client(emu) as client:
        tasks = [task async for task in client.as_completed(["a", "b"])]
        assert len(tasks) == 2
        for task in tasks:
            assert task.snapshot.status is nb.TaskStatus.FAILED
            with pytest.raises(nb.TaskFailedError):
                await task


async def test_as_completed_with_return_exceptions_yields_submit_errors(
    emu: Emulator, client: nb.Client
) -> None:
    """as_completed(return_exceptions=True) yields a submit error instead of raising it."""
    outcomes = [
        outcome async for outcome in client.as_completed(["fine", ""], return_exceptions=True)
    ]

    errors = [o for o in outcomes if isinstance(o, nb.NanoBananaError)]
    tasks = [o for o in outcomes if isinstance(o, nb.Task)]
    assert len(errors) == 1
    assert isinstance(errors[0], nb.InvalidRequestError)
    assert errors[0].field == "prompt"
    assert len(tasks) == 1
    assert (await tasks[0]).images[0].content == "fine"
    assert emu.ledger.tasks_created == 1


async def test_as_completed_accepts_an_async_iterable(client: nb.Client) -> None:
    """as_completed() pulls requests from an async iterable too."""

    async def prompts():  # type: ignore[no-untyped-def]
        for i in range(3):
            yield f"async {i}"

    tasks = [task async for task in client.as_completed(prompts())]
    assert sorted([(await t).images[0].content or "" for t in tasks]) == [
        "async 0",
        "async 1",
        "async 2",
    ]


async def test_env_vars_supply_the_key_and_base_url(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client() with no arguments reads NANOBANANA_API_KEY and NANOBANANA_BASE_URL."""
    monkeypatch.setenv("NANOBANANA_API_KEY", emu.api_key)
    monkeypatch.setenv("NANOBANANA_BASE_URL", emu.base_url)
    async with nb.Client(poll=nb.PollPolicy(speed=1000.0)) as client:
        assert repr(client).startswith(f"nanobanana_async.Client(base_url='{emu.base_url}'")
        result = await client.generate("from the environment")
    assert result.images[0].content == "from the environment"
    assert emu.requests[0].api_key_valid


async def test_missing_key_is_a_clear_error_naming_the_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a key anywhere, Client() raises InvalidRequestError naming NANOBANANA_API_KEY."""
    monkeypatch.delenv("NANOBANANA_API_KEY", raising=False)
    with pytest.raises(nb.InvalidRequestError) as info:
        nb.Client()
    assert info.value.field == "api_key"
    assert "NANOBANANA_API_KEY" in str(info.value)
    monkeypatch.setenv("NANOBANANA_API_KEY", "   ")
    with pytest.raises(nb.InvalidRequestError, match="NANOBANANA_API_KEY"):
        nb.Client()
