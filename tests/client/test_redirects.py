"""Redirects are answers, never followed: a create is not re-sent to another URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

import nanobanana_async as nb

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def redirecting_server(status: int) -> AsyncIterator[tuple[str, list[str]]]:
    """A server whose create answers a redirect to a second create URL; it logs every path hit."""
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        await request.read()
        return web.Response(status=status, headers={"Location": "/elsewhere"})

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"data": {"id": "3-x", "status": "running", "progress": 0}})

    app = web.Application()
    app.router.add_post("/api/v1/image/nano-banana", redirect)
    app.router.add_route("*", "/elsewhere", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirected_create_is_not_followed(status: int) -> None:
    """A create answered with a redirect raises APIStatusError and is sent exactly once."""
    async with redirecting_server(status) as (base_url, hits):
        async with nb.Client("k", base_url=base_url) as client:
            with pytest.raises(nb.APIStatusError) as raised:
                await client.submit("a banana cat")
    assert raised.value.status == status
    assert hits == ["/api/v1/image/nano-banana"]
