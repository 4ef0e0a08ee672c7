"""The API key never shows: not in logs, reprs, nor any exception raised."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

import nanobanana_async as nb
from nanobanana_async._config import Timeouts
from nanobanana_async._transport import Transport
from nanobanana_async.testing import Fault

from ._helpers import dead_port, emulator, make_client

pytestmark = pytest.mark.anyio

SECRET = "sk-SECRET-123"
WRONG_SECRET = "sk-SECRET-WRONG-456"


def _texts(exc: BaseException) -> list[str]:
    """Every text an exception (and its causes) shows."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(vars(current))]
        current = current.__cause__ or current.__context__
    return texts


def _assert_clean(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text
        assert WRONG_SECRET not in text
        assert "SECRET" not in text


async def test_the_key_never_appears_in_logs_reprs_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Over a success, a 401, a dropped create and 500s, no log, repr or error shows the key."""
    caplog.set_level(logging.DEBUG, logger="nanobanana_async")
    errors: list[BaseException] = []
    async with emulator(api_key=SECRET) as emu:
        async with make_client(emu, api_key=SECRET) as client:
            result = await client.generate("a banana cat")
            await result.images[0].read()
            _assert_clean(repr(client), repr(result), repr(client.limiter))

            emu.faults.inject(Fault.drop_after(), endpoint="create", times=1)
            with pytest.raises(nb.SubmitUncertainError) as dropped:
                await client.submit("a lost banana")
            errors.append(dropped.value)

            task = await client.submit("a banana cat")
            emu.faults.inject(Fault.status(500), endpoint="result")
            with pytest.raises(nb.ServerError) as server:
                await task.wait()
            errors.append(server.value)
            _assert_clean(repr(task), repr(task.snapshot))
            with pytest.raises(nb.ServerError) as polled:
                await client.get(task.id)
            errors.append(polled.value)
        _assert_clean(repr(client))

        async with make_client(emu, api_key=WRONG_SECRET) as stranger:
            with pytest.raises(nb.AuthenticationError) as denied:
                await stranger.submit("a banana cat")
            errors.append(denied.value)
            _assert_clean(repr(stranger))

    port = dead_port()
    async with nb.Client(
        SECRET, base_url=f"http://127.0.0.1:{port}", retry=nb.RetryPolicy(attempts=2, sleep=False)
    ) as offline:
        with pytest.raises(nb.TransportError) as unreachable:
            await offline.get("3-some-task")
        errors.append(unreachable.value)

    assert len(errors) == 5
    for error in errors:
        _assert_clean(*_texts(error))
    debug = [r for r in caplog.records if r.name.startswith("nanobanana_async")]
    assert debug, "the client logged nothing at DEBUG"
    assert any("retrying" in r.getMessage() for r in debug)
    for record in debug:
        _assert_clean(record.getMessage(), repr(record.args), record.exc_text or "")
    _assert_clean(caplog.text)


def test_the_key_is_not_in_reprs_of_configuration() -> None:
    """repr() of a client made with a key shows the base URL but never the key."""
    client = nb.Client(SECRET, base_url="http://127.0.0.1:9")
    assert repr(client).startswith("nanobanana_async.Client(")
    assert "127.0.0.1:9" in repr(client)
    _assert_clean(repr(client), str(client))


@asynccontextmanager
async def echoing_server() -> AsyncIterator[str]:
    """Serve an API look-alike that echoes the Authorization header back in its errors."""

    async def echo(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        return web.json_response({"error": f"key rejected: {header}"}, status=401)

    async def echo_500(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        return web.Response(text=f"upstream failed for {header}", status=500)

    app = web.Application()
    app.router.add_post("/api/v1/image/nano-banana", echo)
    app.router.add_post("/api/v1/image/nano-banana/result", echo_500)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_server_echoing_the_key_does_not_leak_it() -> None:
    """An error body that echoes the Authorization header is redacted in the error raised."""
    retry = nb.RetryPolicy(attempts=2, sleep=False)
    async with (
        echoing_server() as base_url,
        nb.Client(SECRET, base_url=base_url, retry=retry) as client,
    ):
        with pytest.raises(nb.AuthenticationError) as denied:
            await client.submit("a banana cat")
        with pytest.raises(nb.ServerError) as failed:
            await client.get("3-some-task")
    for error in (denied.value, failed.value):
        _assert_clean(*_texts(error))
        _assert_clean(repr(getattr(error, "body", None)), getattr(error, "message", ""))


async def _no_gate(kind: str) -> None:
    return None


def _transport(key: str) -> Transport:
    return Transport(
        api_key=key,
        base_url="http://127.0.0.1:9",
        timeouts=Timeouts(),
        max_connections=1,
        session=None,
        proxy=None,
        ssl=None,
        gate=_no_gate,
    )


def _forms(key: str) -> list[str]:
    """The key as servers echo it: raw, JSON with / escaped, \\u escapes, URL, HTML, nested."""
    return [
        key,
        json.dumps(key).replace("/", "\\/"),
        json.dumps(key, ensure_ascii=True).replace("/", "\\u002F").replace("+", "\\u002b"),
        urllib.parse.quote(key, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(key, safe="")),
        urllib.parse.quote(urllib.parse.quote(key, safe=""), safe=""),
        urllib.parse.quote_plus(key),
        "".join(f"&#{ord(c)};" for c in key),
        "".join(f"&#x{ord(c):X};" for c in key),
        html.escape(key),
        json.dumps(json.dumps(key.replace("/", "\\/"))),
    ]


@given(
    key=st.text(alphabet=st.sampled_from("abcXYZ019-_./+="), min_size=8, max_size=40).filter(
        lambda k: k.strip()
    ),
    before=st.text(max_size=10),
    after=st.text(max_size=10),
)
def test_every_escaped_form_of_the_key_is_redacted(key: str, before: str, after: str) -> None:
    """Transport.redact removes the key in raw, JSON-, URL- and HTML-escaped forms alike."""
    transport = _transport(key)
    for form in _forms(key):
        text = f"{before}Bearer {form}{after}"
        assert "[redacted]" in transport.redact(text)
        assert b"[redacted]" in transport.redact_bytes(text.encode())
        decoded = json.loads(form) if form.startswith('"') else form
        while isinstance(decoded, str) and decoded.startswith('"'):
            decoded = json.loads(decoded)
        assert key not in transport.redact(f"{before}{decoded}{after}")


@asynccontextmanager
async def raw_server(reply: bytes) -> AsyncIterator[str]:
    """A TCP server answering every request with *reply* ({auth} replaced by its Authorization)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        auth = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"authorization:"):
                auth = line.split(b":", 1)[1].strip()
        writer.write(reply.replace(b"{auth}", auth))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


SLASHED = "sk-abc/def+ghi=="


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 abc {auth}\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Echo {auth}\r\n\r\n",
        b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Echo: {auth}\r\n\r\n{"da',
    ],
)
async def test_no_chained_aiohttp_error_carries_the_key(reply: bytes) -> None:
    """Malformed answers raise errors whose whole chain (request_info too) holds no key."""
    retry = nb.RetryPolicy(attempts=2, sleep=False)
    async with (
        raw_server(reply) as base_url,
        nb.Client(SLASHED, base_url=base_url, retry=retry) as client,
    ):
        with pytest.raises(nb.NanoBananaError) as polled:
            await client.get("3-some-task")
        with pytest.raises(nb.NanoBananaError) as created:
            await client.submit("a banana cat")
    for error in (polled.value, created.value):
        for text in _texts(error):
            for form in _forms(SLASHED):
                assert form not in text
        current: BaseException | None = error
        while current is not None:
            info = getattr(current, "request_info", None)
            assert info is None or "Authorization" not in info.headers
            current = current.__cause__ or current.__context__
