"""Downloads from a hostile server: a page is never saved as the image, names stay in the folder."""

from __future__ import annotations

from pathlib import Path

import anyio
import attrs
import pytest
from aiohttp import web

import nanobanana_async as nb

from ._helpers import CASE_BOUND, hostile_client
from ._server import PNG, hostile_server

pytestmark = pytest.mark.anyio


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("fault", ["html", "png-type-html-body", "empty"])
async def test_a_non_image_answer_is_a_download_error(fault: str, tmp_path: Path) -> None:
    """A result URL answering a page, text under an image type, or nothing raises DownloadError."""
    async with hostile_server() as server, hostile_client(server) as client:
        with anyio.fail_after(CASE_BOUND):
            result = await client.generate("a banana cat")
            server.file_plan = [fault, fault]
            with pytest.raises(nb.errors.DownloadError) as read:
                await result.images[0].read()
            with pytest.raises(nb.errors.DownloadError) as saved:
                await result.images[0].save(tmp_path / "cat")
            # The link works again: the image can still be fetched later.
            assert await result.images[0].read() == PNG
    assert isinstance(read.value, nb.ProtocolError)
    assert read.value.url == result.images[0].url
    assert saved.value.url == result.images[0].url
    assert _files(tmp_path) == []


async def test_an_expired_link_page_names_what_it_answered(tmp_path: Path) -> None:
    """The DownloadError of an HTML answer carries its content type and an excerpt of the page."""
    async with hostile_server() as server, hostile_client(server) as client:
        with anyio.fail_after(CASE_BOUND):
            result = await client.generate("a banana cat")
            server.file_plan = ["html"]
            with pytest.raises(nb.errors.DownloadError) as info:
                await result.images[0].save(tmp_path)
    assert info.value.content_type is not None
    assert info.value.content_type.startswith("text/html")
    assert "expired" in info.value.excerpt
    assert "text/html" in str(info.value)


async def test_save_all_keeps_a_hostile_task_id_inside_the_folder(tmp_path: Path) -> None:
    """save_all() of a result whose task id is a path writes only inside the folder given."""
    async with hostile_server() as server, hostile_client(server) as client:
        with anyio.fail_after(CASE_BOUND):
            result = await client.generate("a banana cat")
            hostile = attrs.evolve(result, task_id="../../escaped/evil")
            paths = await hostile.save_all(tmp_path / "out")
    assert len(paths) == 1
    assert paths[0].parent == tmp_path / "out"
    assert _files(tmp_path) == [f"out/{paths[0].name}"]
    assert paths[0].read_bytes() == PNG


@pytest.mark.parametrize("task_id", ["../../evil", "a/b", "a\\b", "..", "a\nb", "x\x00y"])
async def test_a_create_answered_with_an_unusable_id_is_uncertain(task_id: str) -> None:
    """A create answer whose id is a path or holds control characters is uncertain, not a task."""

    async def create(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"data": {"id": task_id, "status": "running", "progress": 0}})

    app = web.Application()
    app.router.add_post("/api/v1/image/nano-banana", create)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with nb.Client("k", base_url=base_url, retry=nb.RetryPolicy(sleep=False)) as client:
            with anyio.fail_after(CASE_BOUND), pytest.raises(nb.SubmitUncertainError) as info:
                await client.submit("a banana cat")
    finally:
        await runner.cleanup()
    assert "unusable task id" in str(info.value)


async def test_a_batch_keeps_an_item_whose_link_answered_a_page(tmp_path: Path) -> None:
    """A batch never marks an item succeeded on a page; a rerun downloads the real image."""
    async with hostile_server() as server, hostile_client(server) as client:
        server.file_plan = ["html"]
        with anyio.fail_after(CASE_BOUND):
            first = await nb.run_batch(client, ["a banana cat"], tmp_path)
        assert first.succeeded == 0
        assert first.items[0].paths == ()
        assert not [name for name in _files(tmp_path) if name.endswith(".png")]
        with anyio.fail_after(CASE_BOUND):
            second = await nb.run_batch(client, ["a banana cat"], tmp_path)
    assert second.succeeded == 1
    (path,) = second.items[0].paths
    assert path.read_bytes() == PNG
    assert server.charged["a banana cat"] == 1
