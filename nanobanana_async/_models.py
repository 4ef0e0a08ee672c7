"""Value types of the public API."""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NewType, Protocol, Union, cast

import attrs

from ._catalogue import IMAGE_SIZES
from ._inputs import ImageInput, Reference, check_request, recheck_references

__all__ = ["ImageInput"]  # re-exported for the package's own modules

#: A model the package knows, with its price (`MODEL_COSTS`); a misspelt name is a type error.
KnownModel = Literal["nano-banana-fast", "nano-banana", "nano-banana-pro"]
#: A model the package does not know yet (the set is open: docs/api.md), given on purpose:
#: `nb.CustomModel("nano-banana-2")`. A plain `str` at run time; checked like any other name.
CustomModel = NewType("CustomModel", str)
CustomModel.__doc__ = """A model the package does not know yet, sent on purpose (`str` at run time).

`model=nb.CustomModel("nano-banana-2")` type-checks where a misspelt literal does not. With a budget
set, give its price too: `Client(prices={"nano-banana-2": 18})`.
"""
#: A model name: a known one, or a `CustomModel` (the typed escape hatch for the others).
ModelName = Union[KnownModel, CustomModel]
#: An aspect ratio: `auto` or W:H (the last four only for models newer than the documented ones).
AspectRatio = Literal[
    "auto",
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
    "1:4",
    "4:1",
    "1:8",
    "8:1",
]
#: An output size: 1K, 2K or 4K (at run time, lower-case `1k` is accepted and normalised).
ImageSize = Literal["1K", "2K", "4K"]

#: The model used when none is named.
DEFAULT_MODEL: KnownModel = "nano-banana"
DEFAULT_ASPECT_RATIO: AspectRatio = "auto"
DEFAULT_IMAGE_SIZE: ImageSize = "1K"


class TaskStatus(str, enum.Enum):
    """The status of a generation task."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Not known yet: a task attached by id whose first poll has not answered.
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """Whether the task will not change any more."""
        return self is TaskStatus.SUCCEEDED or self is TaskStatus.FAILED

    def __str__(self) -> str:
        return self.value


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str, default: str = "image") -> str:
    """Return *name* fit to be one file name: no separators, no leading dots, at most 200 chars."""
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".")[:200]
    return cleaned or default


def _images_tuple(value: Iterable[ImageInput] | ImageInput | None) -> tuple[ImageInput, ...]:
    # One path, URL or bytes given alone is a single reference, not an iterable of characters.
    if value is None:
        return ()
    if isinstance(value, (str, bytes, os.PathLike)) or hasattr(value, "read"):
        return (value,)  # type: ignore[return-value]
    return tuple(value)


def _normal_size(value: ImageSize) -> ImageSize:
    # `1k` means 1K (typed callers spell it 1K); anything else is left for the checker to name.
    if isinstance(value, str) and value.upper() in IMAGE_SIZES:
        return cast("ImageSize", value.upper())
    return value


@attrs.frozen(kw_only=True)
class GenerationRequest:
    """One image generation to submit; checked against the API's rules when built.

    `images` are references (paths, bytes, binary file objects, http(s) or `data:` URLs); giving any
    makes the request image-to-image.
    """

    prompt: str
    model: ModelName = DEFAULT_MODEL
    aspect_ratio: AspectRatio = DEFAULT_ASPECT_RATIO
    image_size: ImageSize = attrs.field(default=DEFAULT_IMAGE_SIZE, converter=_normal_size)
    images: tuple[ImageInput, ...] = attrs.field(default=(), converter=_images_tuple)
    # The references as checked at construction: a stream is read once, here, and not again.
    _references: tuple[Any, ...] = attrs.field(init=False, default=(), eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_references", tuple(check_request(self)))

    def wire_references(self) -> list[Reference]:
        """Return the references as a create sends them (files on disk are checked again)."""
        return recheck_references(self.images, self.model, self._references)

    @property
    def mode(self) -> str:
        """`image-to-image` when references are given, else `text-to-image`."""
        return "image-to-image" if self.images else "text-to-image"


class _ImageFetcher(Protocol):
    async def read(self, image: GeneratedImage) -> bytes: ...

    async def save(self, image: GeneratedImage, path: str | os.PathLike[str]) -> Path: ...


@attrs.frozen(kw_only=True)
class GeneratedImage:
    """One generated image: its (expiring) `url` and the service's `content` text.

    `read()` and `save()` download it through the client that saw it.
    """

    url: str
    content: str | None = None
    _fetcher: _ImageFetcher | None = attrs.field(default=None, eq=False, repr=False)

    def _bound(self) -> _ImageFetcher:
        if self._fetcher is None:
            from ._errors import ClientStateError

            raise ClientStateError(
                "this GeneratedImage is not bound to a client; use client.download(image)"
            )
        return self._fetcher

    async def read(self) -> bytes:
        """Download the image and return its bytes."""
        return await self._bound().read(self)

    async def save(self, path: str | os.PathLike[str]) -> Path:
        """Download the image to *path* atomically; return the path written.

        A directory gets a file named after the URL; the suffix follows the content type.
        """
        return await self._bound().save(self, path)


@attrs.frozen(kw_only=True)
class TaskSnapshot:
    """What the API said about a task at one poll."""

    id: str
    status: TaskStatus
    progress: int = 0
    results: tuple[GeneratedImage, ...] = ()
    failure_reason: str | None = None
    error: str | None = None
    credits_cost: int | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the task succeeded or failed."""
        return self.status.is_terminal


@attrs.frozen(kw_only=True)
class TaskResult:
    """A succeeded task: its images, its cost and the final snapshot."""

    task_id: str
    images: tuple[GeneratedImage, ...]
    snapshot: TaskSnapshot
    credits_cost: int | None = None

    async def save_all(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Save every image into *directory* as `<task id>-<n>.<ext>`; return the paths."""
        folder = Path(directory)
        # The task id comes from the server: never let it name a path outside the folder.
        stem = safe_file_name(self.task_id)
        return [await image.save(folder / f"{stem}-{n}") for n, image in enumerate(self.images)]
