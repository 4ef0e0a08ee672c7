"""The create body equals what the provider's curl example sends (provider-api-doc.txt)."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import attrs
import pytest
from aiohttp import BodyPartReader, web

import nanobanana_async as nb

from ._helpers import make_png

pytestmark = pytest.mark.anyio

CURL = shutil.which("curl")
CREATE = "/api/v1/image/nano-banana"
RESULT = "/api/v1/image/nano-banana/result"
PROMPT = "A banana cat in a spacesuit on the moon"


@attrs.frozen
class Part:
    """One multipart part as the server received it."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


@attrs.define
class Capture:
    """A tiny API look-alike that records every multipart create it receives."""

    base_url: str = ""
    creates: list[list[Part]] = attrs.Factory(list)
    authorizations: list[str | None] = attrs.Factory(list)
    polls: list[object] = attrs.Factory(list)
    #: How many creates to answer 429 (before reading them) first.
    rate_limited: int = 0

    async def create(self, request: web.Request) -> web.Response:
        """Record each part (name, filename, content type, bytes) and answer a running task."""
        self.authorizations.append(request.headers.get("Authorization"))
        if self.rate_limited > 0:
            self.rate_limited -= 1
            await request.read()
            return web.json_response(
                {"error": "rate limit exceeded"}, status=429, headers={"Retry-After": "0"}
            )
        parts: list[Part] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, BodyPartReader)
            parts.append(
                Part(
                    part.name,
                    part.filename,
                    part.headers.get("Content-Type"),
                    bytes(await part.read()),
                )
            )
        self.creates.append(parts)
        return web.json_response(
            {
                "data": {
                    "id": "task-id-xxx",
                    "results": [],
                    "progress": 0,
                    "status": "running",
                    "failure_reason": None,
                    "error": None,
                    "credits_cost": 20,
                }
            }
        )

    async def result(self, request: web.Request) -> web.Response:
        """Answer the provider's succeeded example."""
        self.polls.append(await request.json())
        return web.json_response(
            {
                "data": {
                    "id": "task-id-xxx",
                    "results": [{"url": f"{self.base_url}/generated.png", "content": PROMPT}],
                    "progress": 100,
                    "status": "succeeded",
                    "failure_reason": None,
                    "error": None,
                }
            }
        )


@asynccontextmanager
async def capture_server() -> AsyncIterator[Capture]:
    """Serve a `Capture` on 127.0.0.1 with a free port."""
    capture = Capture()
    app = web.Application()
    app.router.add_post(CREATE, capture.create)
    app.router.add_post(RESULT, capture.result)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        capture.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield capture
    finally:
        await runner.cleanup()


async def run_curl(base_url: str, fields: list[str]) -> None:
    """Run the provider's curl example against *base_url* with the given -F fields."""
    assert CURL is not None
    command = [CURL, "-sS", "--fail", "-X", "POST", base_url + CREATE]
    command += ["-H", "Authorization: Bearer api-key"]
    for field in fields:
        command += ["-F", field]
    result = await anyio.run_process(command, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert b'"task-id-xxx"' in result.stdout


def _client(capture: Capture) -> nb.Client:
    return nb.Client(
        "api-key",
        base_url=capture.base_url,
        poll=nb.PollPolicy(initial_delay=0.0),
        retry=nb.RetryPolicy(sleep=False),
    )


def _multiset(parts: list[Part]) -> Counter[tuple[str | None, str | None, bytes]]:
    return Counter((p.name, p.filename, p.data) for p in parts)


def _files(parts: list[Part]) -> list[Part]:
    return [p for p in parts if p.name == "imageFile"]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_create_matches_the_providers_curl_example(tmp_path: Path) -> None:
    """Our multipart create has the same fields, file name, content type and bytes as curl's."""
    ref = tmp_path / "ref.png"
    ref.write_bytes(make_png(8, 6))
    async with capture_server() as capture:
        await run_curl(
            capture.base_url,
            [
                f"prompt={PROMPT}",
                "model=nano-banana-pro",
                "mode=image-to-image",
                "aspectRatio=auto",
                "imageSize=1K",
                f"imageFile=@{ref}",
                "imageUrl=https://example.com/ref.png",
            ],
        )
        async with _client(capture) as client:
            result = await client.generate(
                PROMPT,
                model="nano-banana-pro",
                aspect_ratio="auto",
                image_size="1K",
                images=[ref, "https://example.com/ref.png"],
            )
    assert result.task_id == "task-id-xxx"
    assert result.images[0].content == PROMPT
    assert capture.polls == [{"taskId": "task-id-xxx"}]
    assert capture.authorizations == ["Bearer api-key", "Bearer api-key"]
    curl_parts, our_parts = capture.creates
    assert sorted(p.name or "" for p in our_parts) == sorted(p.name or "" for p in curl_parts)
    assert _multiset(our_parts) == _multiset(curl_parts)
    (curl_file,) = _files(curl_parts)
    (our_file,) = _files(our_parts)
    assert our_file.content_type == curl_file.content_type == "image/png"
    assert our_file.filename == curl_file.filename == "ref.png"
    assert our_file.data == curl_file.data == ref.read_bytes()


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_repeated_fields_match_curl(tmp_path: Path) -> None:
    """Two reference files and two URLs repeat imageFile and imageUrl exactly as curl does."""
    first = tmp_path / "first.png"
    first.write_bytes(make_png(3, 3, (10, 20, 30)))
    second = tmp_path / "second.png"
    second.write_bytes(make_png(5, 4, (40, 50, 60)))
    urls = ["https://example.com/a.png", "https://example.com/b.png"]
    async with capture_server() as capture:
        await run_curl(
            capture.base_url,
            [
                "prompt=two refs",
                "model=nano-banana",
                "mode=image-to-image",
                "aspectRatio=16:9",
                "imageSize=2K",
                f"imageFile=@{first}",
                f"imageFile=@{second}",
                f"imageUrl={urls[0]}",
                f"imageUrl={urls[1]}",
            ],
        )
        async with _client(capture) as client:
            await client.submit(
                "two refs",
                model="nano-banana",
                aspect_ratio="16:9",
                image_size="2K",
                images=[first, second, *urls],
            )
    curl_parts, our_parts = capture.creates
    assert _multiset(our_parts) == _multiset(curl_parts)
    names = Counter(p.name for p in our_parts)
    assert names["imageFile"] == 2
    assert names["imageUrl"] == 2
    assert [p.data for p in our_parts if p.name == "imageUrl"] == [u.encode() for u in urls]
    assert [(p.filename, p.content_type, p.data) for p in _files(our_parts)] == [
        (p.filename, p.content_type, p.data) for p in _files(curl_parts)
    ]


async def test_bytes_and_file_object_references_send_the_exact_bytes(tmp_path: Path) -> None:
    """bytes and open-file references arrive byte for byte with content type image/png."""
    png_a = make_png(2, 2, (1, 2, 3))
    png_b = make_png(7, 1, (4, 5, 6))
    path = tmp_path / "b.png"
    path.write_bytes(png_b)
    async with capture_server() as capture, _client(capture) as client:
        with path.open("rb") as stream:
            await client.submit("refs", images=[png_a, stream])
    (parts,) = capture.creates
    files = _files(parts)
    assert [(f.filename, f.content_type, f.data) for f in files] == [
        ("image-0.png", "image/png", png_a),
        ("b.png", "image/png", png_b),
    ]
    assert {p.name: p.data for p in parts if p.name != "imageFile"} == {
        "prompt": b"refs",
        "model": b"nano-banana",
        "mode": b"image-to-image",
        "aspectRatio": b"auto",
        "imageSize": b"1K",
    }


async def test_a_create_resent_after_a_429_carries_the_same_file_bytes(tmp_path: Path) -> None:
    """After a 429, the re-sent create carries every reference again, byte for byte.

    The caller's open file is read again from where it stood, and is left open for the caller.
    """
    png_a = make_png(2, 2, (1, 2, 3))
    png_b = make_png(7, 1, (4, 5, 6))
    path = tmp_path / "b.png"
    path.write_bytes(png_b)
    on_disk = tmp_path / "c.png"
    on_disk.write_bytes(png_a)
    async with capture_server() as capture, _client(capture) as client:
        capture.rate_limited = 1
        with path.open("rb") as stream:
            task = await client.submit("refs", images=[png_a, stream, on_disk])
            assert not stream.closed
        assert task.id == "task-id-xxx"
    assert len(capture.authorizations) == 2
    (parts,) = capture.creates
    assert [(f.filename, f.data) for f in _files(parts)] == [
        ("image-0.png", png_a),
        ("b.png", png_b),
        ("c.png", png_a),
    ]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_a_text_only_create_is_multipart_like_curls() -> None:
    """A create without references is still multipart/form-data, with the same fields as curl's."""
    fields = ["prompt=a banana cat", "model=nano-banana", "mode=text-to-image"]
    fields += ["aspectRatio=16:9", "imageSize=2K"]
    async with capture_server() as capture:
        await run_curl(capture.base_url, fields)
        async with _client(capture) as client:
            await client.submit(
                "a banana cat", model="nano-banana", aspect_ratio="16:9", image_size="2K"
            )
    curl_parts, our_parts = capture.creates
    assert _multiset(our_parts) == _multiset(curl_parts)
    assert {p.name: p.data for p in our_parts} == {
        "prompt": b"a banana cat",
        "model": b"nano-banana",
        "mode": b"text-to-image",
        "aspectRatio": b"16:9",
        "imageSize": b"2K",
    }
