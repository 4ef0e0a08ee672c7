"""The API's input rules, checked before anything is sent, and reference-image resolution."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, Union

import attrs

from ._catalogue import ASPECT_RATIOS, DOCUMENTED_PRICES, EXTRA_ASPECT_RATIOS, IMAGE_SIZES
from ._errors import InvalidRequestError

if TYPE_CHECKING:
    from typing import TypeAlias

#: A reference image: a path, raw bytes, a binary file object, or an http(s) or `data:` URL.
ImageInput: TypeAlias = Union[str, "os.PathLike[str]", bytes, IO[bytes]]


class RequestFields(Protocol):
    """The fields of a generation request that the input rules look at."""

    @property
    def prompt(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def aspect_ratio(self) -> str: ...
    @property
    def image_size(self) -> str: ...
    @property
    def images(self) -> tuple[ImageInput, ...]: ...


#: Credits per create of the documented models (read-only; `Client(prices=...)` adds or
#: replaces prices). Other model names are passed through.
MODEL_COSTS: Mapping[str, int] = DOCUMENTED_PRICES
MAX_REFERENCES = 14
MAX_REFERENCE_BYTES = 10 * 1024 * 1024

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RATIO = re.compile(r"^[1-9][0-9]*:[1-9][0-9]*$")
_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,(.*)$", re.DOTALL | re.IGNORECASE)
_TYPES_FOR_ALL = ("image/png", "image/jpeg", "image/webp")
_HEIF_TYPES = ("image/heic", "image/heif")
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/heic": ".heic",
    "image/heif": ".heif",
}


def extension_for(content_type: str) -> str | None:
    """Return the file suffix for an image content type, or None if it is not an image type."""
    return _EXTENSIONS.get(content_type.split(";", 1)[0].strip().lower())


def sniff_image_type(head: bytes) -> str | None:
    """Return the content type that the first bytes of an image show, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"):
            return "image/heic"
        if brand in (b"mif1", b"msf1", b"heif"):
            return "image/heif"
    return None


def _allowed_types(model: str) -> tuple[str, ...]:
    return _TYPES_FOR_ALL + _HEIF_TYPES if model.startswith("nano-banana-pro") else _TYPES_FOR_ALL


@attrs.frozen
class FileRef:
    """A reference image sent as an `imageFile` part."""

    filename: str
    content_type: str
    source: Union[Path, bytes]


@attrs.frozen
class UrlRef:
    """A reference image sent as an `imageUrl` field."""

    url: str


@attrs.frozen
class DataRef:
    """A reference image sent as a legacy `imageData` field (a base64 `data:` URL)."""

    data_url: str


Reference = Union[FileRef, UrlRef, DataRef]


def check_request(request: RequestFields) -> list[Reference]:
    """Raise `InvalidRequestError` naming the field and the rule if *request* breaks one.

    Returns the request's references, resolved.
    """
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise InvalidRequestError("prompt", "must be non-empty text")
    _check_text("prompt", request.prompt)
    model = request.model
    if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
        raise InvalidRequestError(
            "model", f"must be a model name such as {', '.join(MODEL_COSTS)}; got {model!r}"
        )
    if request.image_size not in IMAGE_SIZES:
        raise InvalidRequestError(
            "image_size", f"must be one of {', '.join(IMAGE_SIZES)}; got {request.image_size!r}"
        )
    ratio = request.aspect_ratio
    if ratio != "auto":
        if not isinstance(ratio, str) or not _RATIO.fullmatch(ratio):
            raise InvalidRequestError(
                "aspect_ratio", f"must be 'auto' or W:H such as 16:9; got {ratio!r}"
            )
        allowed = ASPECT_RATIOS if model in MODEL_COSTS else ASPECT_RATIOS + EXTRA_ASPECT_RATIOS
        if ratio not in allowed:
            raise InvalidRequestError(
                "aspect_ratio",
                f"{ratio} is not supported by {model}; use auto or {' '.join(allowed)}",
            )
    if len(request.images) > MAX_REFERENCES:
        raise InvalidRequestError(
            "images", f"at most {MAX_REFERENCES} references in all; got {len(request.images)}"
        )
    return [resolve_reference(image, model, index) for index, image in enumerate(request.images)]


def recheck_references(
    images: tuple[ImageInput, ...], model: str, checked: tuple[Reference, ...]
) -> list[Reference]:
    """Return the wire references; files on disk are checked again (they may have changed)."""
    return [
        resolve_reference(images[index], model, index)
        if isinstance(ref, FileRef) and isinstance(ref.source, Path)
        else ref
        for index, ref in enumerate(checked)
    ]


def resolve_reference(image: ImageInput, model: str, index: int) -> Reference:
    """Classify one reference image and check its rules."""
    field = f"images[{index}]"
    if isinstance(image, str):
        lowered = image[:8].lower()
        if lowered.startswith(("http://", "https://")):
            return _check_url(image, field)
        if lowered.startswith("data:"):
            return _check_data_url(image, model, field)
        return _check_path(Path(image), model, field)
    if isinstance(image, os.PathLike):
        return _check_path(Path(image), model, field)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        _check_size(len(data), field)
        content_type = _check_type(data[:32], model, field)
        return FileRef(f"image-{index}{extension_for(content_type)}", content_type, data)
    if hasattr(image, "read"):
        return _check_file_object(image, model, field, index)
    raise InvalidRequestError(
        field, f"must be a path, bytes, a binary file or an http(s)/data: URL; got {type(image)!r}"
    )


def _check_text(field: str, text: str) -> None:
    """Refuse text that cannot be sent as UTF-8 (lone surrogates), naming where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            field,
            f"must be valid Unicode text; it holds a lone surrogate at position {exc.start}",
        ) from None


def _safe_filename(name: str | None) -> str | None:
    # A file name goes into a multipart header: it must encode, and hold no control character.
    if not name:
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if any(ord(c) < 32 or c in '"\\' for c in name):
        return None
    return name


def _check_url(url: str, field: str) -> UrlRef:
    _check_text(field, url)
    rest = url.split("://", 1)[1]
    if not rest or rest.startswith("/") or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidRequestError(field, f"is not a valid http(s) URL: {url[:80]!r}")
    return UrlRef(url)


def _check_data_url(url: str, model: str, field: str) -> DataRef:
    _check_text(field, url)
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequestError(field, "a data: URL must look like data:image/png;base64,...")
    content_type = match.group(1).lower()
    if content_type not in _allowed_types(model):
        raise InvalidRequestError(field, f"{content_type} is not accepted by {model}")
    payload = match.group(2)
    try:
        decoded = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(field, "the data: URL's payload is not valid base64") from exc
    _check_size(len(decoded), field)
    return DataRef(url)


def _check_path(path: Path, model: str, field: str) -> FileRef:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InvalidRequestError(field, f"{path} is not a file")
        with path.open("rb") as f:
            head = f.read(32)
    except InvalidRequestError:
        raise  # a ValueError too: not to be wrapped by the clause below
    except OSError as exc:
        raise InvalidRequestError(field, f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise InvalidRequestError(field, f"is not a usable path: {exc}") from exc
    _check_size(size, field)
    content_type = _check_type(head, model, field)
    name = _safe_filename(path.name) or f"image{extension_for(content_type)}"
    return FileRef(name, content_type, path)


def _check_file_object(stream: IO[bytes], model: str, field: str, index: int) -> FileRef:
    name = getattr(stream, "name", None)
    filename = _safe_filename(Path(name).name) if isinstance(name, str) and name else None
    # Read the caller's stream once, bounded: aiohttp would close a stream it sends, and a
    # re-sent create (after a 429) needs the bytes again. Paths, by contrast, are streamed.
    try:
        start = stream.tell() if stream.seekable() else None
        data = stream.read(MAX_REFERENCE_BYTES + 1)
        if start is not None:
            stream.seek(start)
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(field, f"cannot read the file object: {exc}") from exc
    if not isinstance(data, bytes):
        raise InvalidRequestError(field, "file objects must be opened in binary mode ('rb')")
    _check_size(len(data), field)
    content_type = _check_type(data[:32], model, field)
    return FileRef(filename or f"image-{index}{extension_for(content_type)}", content_type, data)


def _check_size(size: int, field: str) -> None:
    if size > MAX_REFERENCE_BYTES:
        raise InvalidRequestError(
            field, f"references must be at most 10 MB; this one is {size} bytes"
        )
    if size == 0:
        raise InvalidRequestError(field, "the reference image is empty")


def _check_type(head: bytes, model: str, field: str) -> str:
    content_type = sniff_image_type(head)
    allowed = _allowed_types(model)
    if content_type is None or content_type not in allowed:
        names = ", ".join(t.split("/")[1] for t in allowed)
        shown = content_type or "not a recognised image"
        raise InvalidRequestError(field, f"must be {names} for {model}; this one is {shown}")
    return content_type
