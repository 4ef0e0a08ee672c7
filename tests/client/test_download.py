"""Downloading generated images: bytes, atomic saves, the size cap and missing images."""

from __future__ import annotations

from pathlib import Path

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator, Fault, png_size

from ._helpers import emulator, make_client, png_dimensions

pytestmark = pytest.mark.anyio


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("aspect_ratio", "image_size"), [("16:9", "1K"), ("1:1", "2K"), ("auto", "1K"), ("21:9", "4K")]
)
async def test_read_returns_a_png_of_the_expected_size(
    client: nb.Client, aspect_ratio: str, image_size: str
) -> None:
    """read() returns a PNG whose IHDR has the pixel size of the ratio and size asked for."""
    result = await client.generate(
        "a banana cat", model="nano-banana-pro", aspect_ratio=aspect_ratio, image_size=image_size
    )
    data = await result.images[0].read()
    assert png_dimensions(data) == png_size(aspect_ratio, image_size, downscale=8)


async def test_save_adds_the_suffix_and_leaves_no_part_file(
    client: nb.Client, tmp_path: Path
) -> None:
    """save() to a name without suffix writes name.png atomically, with no .part file left."""
    result = await client.generate("a banana cat", aspect_ratio="4:3")
    image = result.images[0]

    written = await image.save(tmp_path / "cat")

    assert written == tmp_path / "cat.png"
    assert png_dimensions(written.read_bytes()) == png_size("4:3", "1K", downscale=8)
    assert written.read_bytes() == await image.read()
    assert _names(tmp_path) == ["cat.png"]
    assert _leftovers(tmp_path) == []


async def test_save_fixes_a_wrong_image_suffix(client: nb.Client, tmp_path: Path) -> None:
    """save() to out.jpg of a PNG writes out.png; a non-image suffix is kept and .png added."""
    result = await client.generate("a banana cat")
    image = result.images[0]
    assert await image.save(tmp_path / "out.jpg") == tmp_path / "out.png"
    assert await image.save(tmp_path / "out.v2") == tmp_path / "out.v2.png"
    assert await image.save(tmp_path / "same.png") == tmp_path / "same.png"
    assert _names(tmp_path) == ["out.png", "out.v2.png", "same.png"]


async def test_save_into_a_directory_names_the_file(client: nb.Client, tmp_path: Path) -> None:
    """save() into an existing directory, or a path ending in '/', names the file from the URL."""
    result = await client.generate("a banana cat")
    image = result.images[0]

    into_existing = await image.save(tmp_path)
    into_new = await image.save(f"{tmp_path}/fresh/")

    assert into_existing == tmp_path / "0.png"
    assert into_new == tmp_path / "fresh" / "0.png"
    assert into_existing.read_bytes() == into_new.read_bytes()
    assert _leftovers(tmp_path) == []


async def test_save_overwrites_an_existing_file(client: nb.Client, tmp_path: Path) -> None:
    """save() replaces an existing file in one step."""
    target = tmp_path / "cat.png"
    target.write_bytes(b"old contents")
    result = await client.generate("a banana cat")
    assert await result.images[0].save(target) == target
    assert target.read_bytes().startswith(b"\x89PNG")


async def test_save_all_writes_every_image(client: nb.Client, tmp_path: Path) -> None:
    """TaskResult.save_all() writes <task id>-<n>.png for each image into the directory."""
    result = await client.generate("a banana cat")
    paths = await result.save_all(tmp_path / "out")
    assert paths == [tmp_path / "out" / f"{result.task_id}-0.png"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")


async def test_the_size_cap_raises_protocol_error(tmp_path: Path) -> None:
    """An image larger than max_download_bytes raises ProtocolError; save() leaves nothing."""
    async with emulator() as emu, make_client(emu, max_download_bytes=100) as client:
        result = await client.generate("a banana cat")
        with pytest.raises(nb.ProtocolError, match="larger than 100 bytes"):
            await result.images[0].read()
        with pytest.raises(nb.ProtocolError):
            await result.images[0].save(tmp_path / "cat")
    assert _names(tmp_path) == []


async def test_a_missing_image_raises_not_found_error(
    emu: Emulator, client: nb.Client, tmp_path: Path
) -> None:
    """Downloading an image URL that answers 404 raises NotFoundError and writes nothing."""
    image = nb.GeneratedImage(url=f"{emu.base_url}/files/3-unknown/0.png")
    with pytest.raises(nb.errors.NotFoundError) as info:
        await client.download(image)
    assert info.value.status == 404
    assert "file not found" in str(info.value)
    with pytest.raises(nb.errors.NotFoundError):
        await client.download(image, tmp_path / "missing")
    assert _names(tmp_path) == []


async def test_an_image_of_a_running_task_is_not_found() -> None:
    """The URL of an image is valid only once its task succeeded: before, it is 404."""
    async with emulator(duration=1e6) as slow, make_client(slow) as client:
        task = await client.submit("a banana cat")
        image = nb.GeneratedImage(url=f"{slow.base_url}/files/{task.id}/0.png")
        with pytest.raises(nb.errors.NotFoundError):
            await client.download(image)
    assert task.snapshot.status is nb.TaskStatus.RUNNING


async def test_downloads_never_send_the_api_key(emu: Emulator, client: nb.Client) -> None:
    """Image downloads go out without the Authorization header (result URLs are public links)."""
    result = await client.generate("a banana cat")
    await result.images[0].read()
    files = [r for r in emu.requests if r.endpoint == "file"]
    assert len(files) == 1
    assert not files[0].api_key_valid


async def test_an_unbound_image_refuses_to_download() -> None:
    """A GeneratedImage built by hand has no client: read() raises ClientStateError."""
    image = nb.GeneratedImage(url="http://127.0.0.1:9/x.png")
    with pytest.raises(nb.errors.ClientStateError, match=r"client\.download"):
        await image.read()


async def test_a_non_http_result_url_raises_protocol_error(client: nb.Client) -> None:
    """A result URL that is not http(s) raises ProtocolError instead of being fetched."""
    with pytest.raises(nb.ProtocolError, match="not http"):
        await client.download(nb.GeneratedImage(url="file:///etc/passwd"))


@pytest.mark.parametrize(
    "fault",
    [Fault.status(503), Fault.drop_before(), Fault.rate_limit(retry_after=0.01)],
    ids=["503", "dropped", "429"],
)
async def test_a_failed_download_is_retried_under_the_retry_policy(
    fault: Fault, tmp_path: Path
) -> None:
    """A download failing with a 5xx, a dropped connection or a 429 is tried again, and saved."""
    events: list[nb.events.RetryEvent] = []
    async with emulator() as emu, make_client(emu) as client:
        client.add_retry_listener(events.append)
        result = await client.generate("a banana cat")
        first = emu.faults.inject(fault, endpoint="file", times=2)
        path = await result.images[0].save(tmp_path / "cat")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        second = emu.faults.inject(fault, endpoint="file", times=1)
        assert (await result.images[0].read())[:8] == b"\x89PNG\r\n\x1a\n"
    assert (first.fired, second.fired) == (2, 1)
    # (aiohttp itself repeats a GET once on a reused connection the server dropped.)
    assert events
    assert all(event.endpoint == "download" for event in events)
    assert _names(tmp_path) == ["cat.png"]


async def test_a_download_gives_up_after_the_allowed_tries(tmp_path: Path) -> None:
    """Downloads failing every time raise their error after RetryPolicy.attempts tries."""
    retry = nb.RetryPolicy(attempts=3, sleep=False)
    async with emulator() as emu, make_client(emu, retry=retry) as client:
        result = await client.generate("a banana cat")
        handle = emu.faults.inject(Fault.status(500), endpoint="file")
        with pytest.raises(nb.ServerError):
            await result.images[0].save(tmp_path / "cat")
    assert handle.fired == 3
    assert _names(tmp_path) == []
