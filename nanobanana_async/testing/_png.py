"""Deterministic, valid PNGs at the pixel sizes the Gemini image models produce."""

from __future__ import annotations

import functools
import hashlib
import math
import re
import struct
import zlib

__all__ = ["png_size", "render_png"]

# docs/api.md section 3, "Output pixel sizes": (1K, 2K, 4K) as (width, height).
_SIZES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "1:1": ((1024, 1024), (2048, 2048), (4096, 4096)),
    "16:9": ((1376, 768), (2752, 1536), (5504, 3072)),
    "9:16": ((768, 1376), (1536, 2752), (3072, 5504)),
    "4:3": ((1200, 896), (2400, 1792), (4800, 3584)),
    "3:4": ((896, 1200), (1792, 2400), (3584, 4800)),
    "3:2": ((1264, 848), (2528, 1696), (5056, 3392)),
    "2:3": ((848, 1264), (1696, 2528), (3392, 5056)),
    "4:5": ((928, 1152), (1856, 2304), (3712, 4608)),
    "5:4": ((1152, 928), (2304, 1856), (4608, 3712)),
    "21:9": ((1584, 672), (3168, 1344), (6336, 2688)),
}
_SCALE = {"1K": 0, "2K": 1, "4K": 2}
_RATIO = re.compile(r"^([1-9][0-9]*):([1-9][0-9]*)$")
_AREA_1K = 1024 * 1024

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib header for a 32 KiB window; the level bits are informational only.
_ZLIB_HEADER = b"\x78\xda"
# Identical rows are deflated this many at a time; the compressed run is then repeated.
_ROWS_PER_RUN = 16
_BANDS = 8
_GRADIENT_STEPS = 64


def png_size(aspect_ratio: str, image_size: str, *, downscale: int = 1) -> tuple[int, int]:
    """Return the (width, height) in pixels of an image the API produces.

    Args:
        aspect_ratio: ``auto`` (treated as 1:1) or ``W:H``. Ratios missing from
            docs/api.md's table are derived from a ~1024x1024 area at 1K, rounded to
            multiples of 16.
        image_size: ``1K``, ``2K`` or ``4K``.
        downscale: Divide both sides by this (the emulator's ``image_downscale``).

    Raises:
        ValueError: If the ratio or size is malformed, or ``downscale`` < 1.
    """
    if image_size not in _SCALE:
        raise ValueError(f"image_size must be 1K, 2K or 4K, not {image_size!r}")
    if downscale < 1:
        raise ValueError(f"downscale must be >= 1, not {downscale!r}")
    ratio = "1:1" if aspect_ratio == "auto" else aspect_ratio
    scale = _SCALE[image_size]
    if ratio in _SIZES:
        width, height = _SIZES[ratio][scale]
    else:
        match = _RATIO.match(ratio)
        if match is None:
            raise ValueError(f"aspect_ratio must be 'auto' or 'W:H', not {aspect_ratio!r}")
        r = int(match[1]) / int(match[2])
        width = _round16(math.sqrt(_AREA_1K * r)) << scale
        height = _round16(math.sqrt(_AREA_1K / r)) << scale
    return max(1, width // downscale), max(1, height // downscale)


def _round16(value: float) -> int:
    return max(16, round(value / 16) * 16)


@functools.lru_cache(maxsize=32)
def render_png(width: int, height: int, seed: bytes) -> bytes:
    """Return a valid 8-bit RGB PNG of the given size whose pattern derives from ``seed``.

    The same arguments always give the same bytes. The image is a stack of
    horizontal bands, each a left-to-right colour gradient, so every row of a
    band is identical: that lets a 4K image be encoded in milliseconds by
    deflating a short run of rows once and repeating the compressed run.
    """
    if width < 1 or height < 1:
        raise ValueError("width and height must be >= 1")
    starts = hashlib.sha256(seed).digest()
    ends = hashlib.sha256(starts).digest()
    bands = min(_BANDS, height)
    idat = [_ZLIB_HEADER]
    adler = 1
    for band in range(bands):
        rows = (band + 1) * height // bands - band * height // bands
        row = b"\x00" + _gradient_row(
            width, starts[band * 3 : band * 3 + 3], ends[band * 3 : band * 3 + 3]
        )
        full, rest = divmod(rows, _ROWS_PER_RUN)
        if full:
            idat.append(_deflate_run(row * _ROWS_PER_RUN) * full)
        if rest:
            idat.append(_deflate_run(row * rest))
        adler = zlib.adler32(row * rows, adler)
    # An empty final block closes the deflate stream the flushed runs left open.
    idat.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush())
    idat.append(struct.pack(">I", adler))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", b"".join(idat)),
            _chunk(b"IEND", b""),
        )
    )


def _gradient_row(width: int, start: bytes, end: bytes) -> bytes:
    # Constant-colour segments keep this fast for 6336-pixel rows.
    steps = min(_GRADIENT_STEPS, width)
    parts = []
    for step in range(steps):
        x0, x1 = step * width // steps, (step + 1) * width // steps
        t = step / max(1, steps - 1)
        pixel = bytes(round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
        parts.append(pixel * (x1 - x0))
    return b"".join(parts)


def _deflate_run(data: bytes) -> bytes:
    # A full flush resets the compressor, so the output never refers back past its
    # own start and can be repeated verbatim inside one deflate stream.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
