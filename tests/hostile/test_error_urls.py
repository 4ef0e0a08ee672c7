"""Errors name the URL (issue 19): an error status, or an answer we cannot read, says which
request got it (method and URL, never the key), so a wrong base URL shows at once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

import nanobanana_async as nb
from nanobanana_async.testing import Emulator
from tests.cli._helpers import cli_env, err, run_cli

pytestmark = pytest.mark.anyio


async def test_a_wrong_base_url_path_names_the_url_in_the_cli() -> None:
    """`generate` against a base URL with a wrong path says `HTTP 404 ... from POST <URL>`."""
    async with Emulator(speed=1000, image_downscale=8) as emu:
        wrong = f"{emu.base_url}/wrong"
        result = await run_cli("generate", "a cat", env=cli_env(emu, NANOBANANA_BASE_URL=wrong))
    assert result.returncode == 1
    line = err(result).strip().splitlines()[-1]
    assert "HTTP 404" in line
    assert f"from POST {wrong}/api/v1/image/nano-banana" in line
    assert emu.api_key not in err(result)


@pytest.fixture
async def foreign_server() -> AsyncIterator[str]:
    """A server that is not the API: empty 404s, and an HTML page with 200 on /page."""

    async def empty_404(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<html><body>Welcome to nginx!</body></html>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_post("/page/api/v1/image/nano-banana/result", page)
    app.router.add_route("*", "/{tail:.*}", empty_404)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_an_empty_404_from_a_foreign_server_names_status_and_url(foreign_server: str) -> None:
    """An empty 404 reads `HTTP 404: Not Found (from POST <URL>)`, not `HTTP 404: HTTP 404`."""
    key = "sk-secret-key-0123456789"
    retry = nb.RetryPolicy(attempts=1, sleep=False)
    async with nb.Client(key, base_url=foreign_server, retry=retry) as client:
        with pytest.raises(nb.errors.NotFoundError) as raised:
            await client.get("task-1")
    text = str(raised.value)
    assert text == (
        f"HTTP 404: Not Found (from POST {foreign_server}/api/v1/image/nano-banana/result)"
    )
    assert raised.value.source == f"POST {foreign_server}/api/v1/image/nano-banana/result"
    assert key not in text


async def test_an_unreadable_answer_names_its_url(foreign_server: str) -> None:
    """A 200 HTML page where a task was expected is a ProtocolError naming the request."""
    retry = nb.RetryPolicy(attempts=1, sleep=False)
    base = f"{foreign_server}/page"
    async with nb.Client("sk-secret-key-0123456789", base_url=base, retry=retry) as client:
        with pytest.raises(nb.ProtocolError) as raised:
            await client.get("task-1")
    assert f"from POST {base}/api/v1/image/nano-banana/result" in str(raised.value)
