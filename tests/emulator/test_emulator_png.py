"""The result images: real PNGs at the documented pixel sizes, deterministic per request."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from nanobanana_async.testing import Emulator, png_size

from ._helpers import create, png_chunks, png_size_of, text_to_image, wait_until_done

pytestmark = pytest.mark.anyio


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as client:
        yield client


# Copied from docs/api.md section 3 rather than from the emulator, so both must agree.
TABLE = [
    ("1:1", "1K", (1024, 1024)),
    ("auto", "2K", (2048, 2048)),
    ("1:1", "4K", (4096, 4096)),
    ("16:9", "1K", (1376, 768)),
    ("16:9", "4K", (5504, 3072)),
    ("9:16", "2K", (1536, 2752)),
    ("4:3", "1K", (1200, 896)),
    ("3:4", "4K", (3584, 4800)),
    ("3:2", "2K", (2528, 1696)),
    ("2:3", "1K", (848, 1264)),
    ("4:5", "4K", (3712, 4608)),
    ("5:4", "1K", (1152, 928)),
    ("21:9", "2K", (3168, 1344)),
    ("21:9", "4K", (6336, 2688)),
]


@pytest.mark.parametrize(("ratio", "size", "expected"), TABLE)
def test_png_size_matches_the_documented_table(
    ratio: str, size: str, expected: tuple[int, int]
) -> None:
    """png_size gives docs/api.md's pixel size for each documented ratio and size."""
    assert png_size(ratio, size) == expected


def test_png_size_derives_other_ratios_and_downscales() -> None:
    """Ratios outside the table keep a ~1 MP area at 1K in multiples of 16; downscale divides."""
    assert png_size("1:4", "1K") == (512, 2048)
    assert png_size("4:1", "2K") == (4096, 1024)
    width, height = png_size("1:8", "1K")
    assert width % 16 == 0
    assert height % 16 == 0
    assert abs(width * height - 1024 * 1024) < 0.03 * 1024 * 1024
    width, height = png_size("8:1", "1K")
    assert png_size("8:1", "4K") == (4 * width, 4 * height)
    assert png_size("16:9", "1K", downscale=16) == (86, 48)
    with pytest.raises(ValueError, match="image_size"):
        png_size("1:1", "8K")
    with pytest.raises(ValueError, match="aspect_ratio"):
        png_size("square", "1K")


async def _served_png(session: aiohttp.ClientSession, emu: Emulator, **overrides: Any) -> bytes:
    status, body = await create(session, emu, json_body=text_to_image(**overrides))
    assert status == 200, body
    final = (await wait_until_done(session, emu, body["data"]["id"]))[-1]
    async with session.get(final["results"][0]["url"]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        return await response.read()


async def test_served_pngs_have_the_documented_sizes(session: aiohttp.ClientSession) -> None:
    """Served PNGs carry docs/api.md's pixel size (divided by image_downscale) in their IHDR."""
    cases = [
        ("auto", "1K", (1024, 1024)),
        ("16:9", "2K", (2752, 1536)),
        ("9:16", "1K", (768, 1376)),
        ("3:4", "4K", (3584, 4800)),
        ("21:9", "4K", (6336, 2688)),
    ]
    async with Emulator(speed=1000.0, duration=5.0, image_downscale=8, credits=None) as emu:
        for ratio, size, (width, height) in cases:
            data = await _served_png(
                session, emu, model="nano-banana-pro", aspectRatio=ratio, imageSize=size
            )
            assert png_size_of(data) == (width // 8, height // 8)


async def test_full_size_4k_png_is_served(session: aiohttp.ClientSession) -> None:
    """Without downscaling a 4K image is served at full size with valid chunks."""
    async with Emulator(speed=1000.0, duration=5.0) as emu:
        data = await _served_png(session, emu, model="nano-banana-pro", imageSize="4K")
        assert png_size_of(data) == (4096, 4096)


async def test_png_pixel_data_is_well_formed(session: aiohttp.ClientSession) -> None:
    """The IDAT inflates to exactly one filter byte plus 3 bytes per pixel for every row."""
    async with Emulator(speed=1000.0, duration=5.0, image_downscale=16) as emu:
        data = await _served_png(session, emu, aspectRatio="4:3", imageSize="1K")
    width, height = png_size_of(data)
    assert (width, height) == (75, 56)
    idat = b"".join(body for kind, body in png_chunks(data) if kind == b"IDAT")
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    assert all(raw[row * stride] == 0 for row in range(height))
    assert len(set(raw)) > 2  # a pattern, not a blank image


async def test_pngs_are_deterministic(session: aiohttp.ClientSession) -> None:
    """Identical prompt and options give identical bytes, across emulators; a new prompt differs."""
    options = {"prompt": "same", "aspectRatio": "3:2", "imageSize": "2K"}
    images = []
    for seed in (1, 2):
        async with Emulator(speed=1000.0, duration=5.0, image_downscale=4, seed=seed) as emu:
            images.append(await _served_png(session, emu, **options))
            images.append(await _served_png(session, emu, **options))
            images.append(await _served_png(session, emu, **{**options, "prompt": "other"}))
    assert images[0] == images[1] == images[3] == images[4]
    assert images[2] == images[5]
    assert images[0] != images[2]
