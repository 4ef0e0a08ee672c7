"""Downloading generated images: streamed, size-capped, written atomically."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import anyio
import yarl

from ._config import RetryPolicy
from ._errors import (
    DownloadError,
    NanoBananaError,
    ProtocolError,
    RateLimitError,
    ServerError,
    TransportError,
)
from ._inputs import extension_for, sniff_image_type
from ._models import safe_file_name
from ._retry import Backoff
from ._transport import NETWORK_ERRORS, describe
from ._wire import decode_answer

if TYPE_CHECKING:
    from ._models import GeneratedImage

T = TypeVar("T")

_CHUNK = 256 * 1024
#: Bytes enough to tell every image format we know by its magic bytes.
_HEAD = 16
#: Content types a storage service may give an image (S3 and the like), besides image/*.
_BINARY_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_SAME_SUFFIXES = {".jpeg": ".jpg", ".jpg": ".jpg", ".heif": ".heif", ".heic": ".heic"}


class Downloader:
    """Reads and saves generated images through the client's aiohttp session.

    The API key is never sent with a download: result URLs are public links, often on another host.
    """

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        slots: asyncio.Semaphore,
        *,
        timeout: float | None,
        max_bytes: int,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        on_retry: Callable[[int, float, BaseException, str], None] | None = None,
    ) -> None:
        self._session = session
        self._slots = slots
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_bytes = max_bytes
        self._retry = retry if retry is not None else RetryPolicy(attempts=1)
        self._rng = rng if rng is not None else random.Random()
        self._on_retry = on_retry

    async def _retrying(self, image: GeneratedImage, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run *attempt* again after a network error, a 429 or a 5xx, under the retry policy.

        A download is a plain GET of a public link: repeating it costs nothing. An answer that is
        not an image, or a 4xx (an expired link), is not retried.
        """
        backoff: Backoff | None = None
        while True:
            try:
                return await attempt()
            except (TransportError, RateLimitError, ServerError) as exc:
                if backoff is None:
                    backoff = Backoff(self._retry, self._rng)
                wait = backoff.next_wait(exc)
                if wait is None:
                    raise
                if self._on_retry is not None:
                    self._on_retry(backoff.attempt, wait, exc, image.url)
                if wait > 0:
                    await anyio.sleep(wait)

    async def read(self, image: GeneratedImage) -> bytes:
        """Return the image's bytes."""
        return await self._retrying(image, lambda: self._read_once(image))

    async def _read_once(self, image: GeneratedImage) -> bytes:
        chunks: list[bytes] = []
        async for chunk, _ in self._stream(image):
            chunks.append(chunk)
        return b"".join(chunks)

    async def save(self, image: GeneratedImage, path: str | os.PathLike[str]) -> Path:
        """Write the image to *path* atomically and return the path written.

        A directory (existing, or a path ending in a separator) gets the URL's file name. The suffix
        is set from the content type (`out` becomes `out.png`; `out.jpg` holding a PNG becomes
        `out.png`). Network errors, 429 and 5xx are retried under the client's `RetryPolicy`.
        """
        return await self._retrying(image, lambda: self._save_once(image, path))

    async def _save_once(self, image: GeneratedImage, path: str | os.PathLike[str]) -> Path:
        wanted = Path(path)
        is_dir = await anyio.Path(wanted).is_dir() or str(path).endswith(("/", os.sep))
        target: Path | None = None
        tmp: Path | None = None
        handle: anyio.AsyncFile[bytes] | None = None
        try:
            async for chunk, content_type in self._stream(image):
                if handle is None:
                    suffix = extension_for(content_type) or extension_for(
                        sniff_image_type(chunk[:32]) or ""
                    )
                    target = _target(wanted, is_dir, image.url, suffix)
                    await anyio.Path(target.parent).mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
                    handle = await anyio.open_file(tmp, "wb")
                await handle.write(chunk)
            if handle is None or target is None or tmp is None:
                raise DownloadError(f"the image at {image.url[:100]} is empty", url=image.url)
            await handle.aclose()
            handle = None
            await anyio.to_thread.run_sync(os.replace, tmp, target)
            tmp = None
            return target
        finally:
            # Shielded: a cancelled save must still close and remove its temporary file.
            with anyio.CancelScope(shield=True):
                if handle is not None:
                    await handle.aclose()
                if tmp is not None:
                    await anyio.Path(tmp).unlink(missing_ok=True)

    async def _stream(self, image: GeneratedImage) -> AsyncIterator[tuple[bytes, str]]:
        """Yield the image's chunks with the answer's content type, capped at `max_bytes`.

        The answer must be an image: an image (or generic binary) content type, and the magic
        bytes of an image format. A link answering `200 text/html` ("this link expired") raises
        `DownloadError` before a byte is handed on, so nothing is ever saved as the image.
        """
        url = yarl.URL(image.url)
        if url.scheme not in ("http", "https"):
            raise ProtocolError(f"result URL is not http(s): {image.url[:100]!r}")
        total = 0
        try:
            async with self._slots, self._session().get(url, timeout=self._timeout) as response:
                if response.status >= 300:
                    body = await response.content.read(2048)
                    decode_answer(response.status, body)  # raises the typed error
                    raise ProtocolError("unexpected download answer", status=response.status)
                content_type = response.headers.get("Content-Type", "")
                media = content_type.split(";", 1)[0].strip().lower()
                if not (media.startswith("image/") or media in _BINARY_TYPES):
                    body = await response.content.read(2048)
                    raise DownloadError(
                        f"the result URL {image.url[:100]} answered {media or 'no type'}, "
                        "not an image",
                        url=image.url,
                        content_type=content_type,
                        status=response.status,
                        body=body,
                    )
                head: bytes | None = b""
                async for chunk in response.content.iter_chunked(_CHUNK):
                    total += len(chunk)
                    if total > self._max_bytes:
                        raise ProtocolError(
                            f"the image at {image.url[:100]} is larger than {self._max_bytes} bytes"
                        )
                    if head is not None:
                        head += chunk
                        if len(head) < _HEAD:
                            continue
                        _check_magic(head, image.url, content_type, response.status)
                        chunk, head = head, None
                    yield chunk, content_type
                if head is not None:
                    # Shorter than any image header (or empty).
                    _check_magic(head, image.url, content_type, response.status)
                    if head:
                        yield head, content_type
        except NanoBananaError:
            raise
        except NETWORK_ERRORS as exc:
            raise TransportError(f"download of {image.url[:100]} failed: {describe(exc)}") from exc


def looks_like_image(head: bytes) -> bool:
    """Whether *head* (the first bytes of a file) starts like an image format."""
    return (
        sniff_image_type(head) is not None
        or head.startswith((b"GIF87a", b"GIF89a"))
        or (head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"))
    )


def _check_magic(head: bytes, url: str, content_type: str, status: int) -> None:
    if not looks_like_image(head):
        what = "an empty answer" if not head else "bytes that are no image format"
        raise DownloadError(
            f"the result URL {url[:100]} answered {what} ({content_type or 'no type'})",
            url=url,
            content_type=content_type,
            status=status,
            body=head[:2048],
        )


def _target(wanted: Path, is_dir: bool, url: str, suffix: str | None) -> Path:
    if is_dir:
        # The name comes from the server's URL: one plain file name inside the folder.
        name = safe_file_name(PurePosixPath(yarl.URL(url).path).name)
        target = wanted / name
    else:
        target = wanted
    if suffix is None:
        return target
    current = target.suffix.lower()
    if _SAME_SUFFIXES.get(current, current) == _SAME_SUFFIXES.get(suffix, suffix):
        return target
    if current in (".png", ".jpg", ".jpeg", ".webp", ".heic", ".heif"):
        return target.with_suffix(suffix)
    return target.with_name(target.name + suffix)
