"""Input rules: bad input raises InvalidRequestError naming the field, before a byte is sent."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

from ._helpers import PNG_SIGNATURE, make_png

pytestmark = pytest.mark.anyio

HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 16


def _big_png(tmp_path: Path) -> Path:
    path = tmp_path / "huge.png"
    with path.open("wb") as f:
        f.write(make_png())
        f.truncate(10 * 1024 * 1024 + 1)  # sparse: no 10 MB actually written
    return path


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("not an image at all\n")
    return path


# Each case: (id, the submit keyword arguments given the tmp dir, the field named).
CASES: list[tuple[str, Callable[[Path], dict[str, Any]], str]] = [
    ("empty-prompt", lambda _: {"prompt": ""}, "prompt"),
    ("blank-prompt", lambda _: {"prompt": " \n\t "}, "prompt"),
    ("bad-model-name", lambda _: {"model": "nano banana!"}, "model"),
    ("empty-model-name", lambda _: {"model": ""}, "model"),
    ("bad-image-size", lambda _: {"image_size": "3K"}, "image_size"),
    ("lone-surrogate-prompt", lambda _: {"prompt": "a \ud800 cat"}, "prompt"),
    ("model-with-newline", lambda _: {"model": "nano-banana\n"}, "model"),
    ("ratio-with-newline", lambda _: {"aspect_ratio": "16:9\n"}, "aspect_ratio"),
    ("nul-in-path", lambda p: {"images": [str(p / "a\0b.png")]}, "images[0]"),
    ("nul-in-pathlike", lambda p: {"images": [p / "a\0b.png"]}, "images[0]"),
    ("surrogate-in-url", lambda _: {"images": ["https://x.test/\udcff.png"]}, "images[0]"),
    ("control-in-url", lambda _: {"images": ["https://x.test/a\x00.png"]}, "images[0]"),
    ("size-not-text", lambda _: {"image_size": 1}, "image_size"),
    ("malformed-ratio", lambda _: {"aspect_ratio": "16x9"}, "aspect_ratio"),
    ("zero-ratio", lambda _: {"aspect_ratio": "0:1"}, "aspect_ratio"),
    (
        "unsupported-ratio",
        lambda _: {"model": "nano-banana", "aspect_ratio": "1:4"},
        "aspect_ratio",
    ),
    (
        "ratio-not-in-list",
        lambda _: {"model": "nano-banana-pro", "aspect_ratio": "7:5"},
        "aspect_ratio",
    ),
    ("fifteen-references", lambda _: {"images": [make_png()] * 15}, "images"),
    ("file-over-10mb", lambda p: {"images": [_big_png(p)]}, "images[0]"),
    ("bytes-over-10mb", lambda _: {"images": [make_png() + bytes(10 * 1024 * 1024)]}, "images[0]"),
    ("non-image-file", lambda p: {"images": [_text_file(p)]}, "images[0]"),
    ("non-image-bytes", lambda _: {"images": [b"GIF89a" + bytes(40)]}, "images[0]"),
    ("empty-bytes", lambda _: {"images": [b""]}, "images[0]"),
    ("heic-for-non-pro", lambda _: {"model": "nano-banana", "images": [HEIC_HEAD]}, "images[0]"),
    ("text-mode-file", lambda p: {"images": [io.StringIO("text")]}, "images[0]"),
    ("bad-url", lambda _: {"images": ["http://"]}, "images[0]"),
    ("url-with-space", lambda _: {"images": ["https://example.com/a b.png"]}, "images[0]"),
    ("bad-data-url", lambda _: {"images": ["data:image/png;base64,@@not-base64@@"]}, "images[0]"),
    ("data-url-not-image", lambda _: {"images": ["data:text/plain;base64,aGk="]}, "images[0]"),
    ("data-url-no-base64", lambda _: {"images": ["data:image/png,rawbytes"]}, "images[0]"),
    ("missing-file", lambda p: {"images": [p / "missing.png"]}, "images[0]"),
    ("missing-file-as-str", lambda p: {"images": [str(p / "missing.png")]}, "images[0]"),
    ("second-reference-bad", lambda p: {"images": [make_png(), p / "missing.png"]}, "images[1]"),
    ("directory", lambda p: {"images": [p]}, "images[0]"),
    ("not-an-image-type", lambda _: {"images": [12345]}, "images[0]"),
]


@pytest.mark.parametrize(
    ("make_kwargs", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_input_names_the_field_and_sends_nothing(
    emu: Emulator, client: nb.Client, tmp_path: Path, make_kwargs: Any, field: str
) -> None:
    """Each input rule raises InvalidRequestError naming the field; the emulator saw nothing."""
    kwargs = {"prompt": "a banana cat", **make_kwargs(tmp_path)}
    prompt = kwargs.pop("prompt")
    with pytest.raises(nb.InvalidRequestError) as info:
        await client.submit(prompt, **kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert info.value.rule in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(nb.InvalidRequestError):
        await client.generate(prompt, **kwargs)
    with pytest.raises(nb.InvalidRequestError):
        nb.GenerationRequest(prompt=prompt, **kwargs)
    assert emu.requests == []
    assert client.credits.reserved == 0
    assert client.limiter.in_flight == 0  # type: ignore[attr-defined]


async def test_the_ratio_of_newer_models_is_accepted_for_them(
    emu: Emulator, client: nb.Client
) -> None:
    """1:4 is refused locally for documented models only; another model passes it to the API."""
    with pytest.raises(nb.BadRequestError, match="invalid model"):
        await client.submit("a banana cat", model="nano-banana-2", aspect_ratio="1:4")
    assert emu.requests[0].fields is not None
    assert emu.requests[0].fields["aspectRatio"] == "1:4"


async def test_heic_is_accepted_for_pro(emu: Emulator, client: nb.Client) -> None:
    """A HEIC reference goes through for nano-banana-pro with content type image/heic."""
    task = await client.submit("a banana cat", model="nano-banana-pro", images=[HEIC_HEAD])
    assert emu.tasks[task.id].reference_count == 1
    assert emu.requests[0].fields is not None
    assert emu.requests[0].fields["imageFile"] == ["image-0.heic"]
    await task


async def test_mixed_references_are_sent_as_the_api_expects(
    emu: Emulator, client: nb.Client, tmp_path: Path
) -> None:
    """Path, bytes, an open file, an http URL and a data: URL go out together as image-to-image."""
    on_disk = tmp_path / "ref.png"
    on_disk.write_bytes(make_png(3, 3))
    opened = tmp_path / "opened.png"
    opened.write_bytes(make_png(4, 4))
    data_url = "data:image/png;base64," + base64.b64encode(make_png(5, 5)).decode()
    url = "https://example.com/ref.jpg"

    with opened.open("rb") as stream:
        task = await client.submit(
            "a banana cat", images=[on_disk, make_png(2, 2), stream, url, data_url]
        )

    creates = [r for r in emu.requests if r.endpoint == "create"]
    assert len(creates) == 1
    fields = creates[0].fields
    assert fields is not None
    assert fields["mode"] == "image-to-image"
    assert fields["prompt"] == "a banana cat"
    assert sorted(fields["imageFile"]) == sorted(["ref.png", "image-1.png", "opened.png"])
    assert fields["imageUrl"] == [url]
    assert fields["imageData"] == [data_url]
    emulated = emu.tasks[task.id]
    assert emulated.mode == "image-to-image"
    assert emulated.reference_count == 5
    assert (await task).task_id == task.id


async def test_a_single_reference_is_not_split_into_characters(
    emu: Emulator, client: nb.Client, tmp_path: Path
) -> None:
    """images= given one path (not a list) is one reference."""
    path = tmp_path / "one.png"
    path.write_bytes(make_png())
    task = await client.submit("a banana cat", images=path)
    assert emu.tasks[task.id].reference_count == 1
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    await task


async def test_fourteen_references_are_allowed(emu: Emulator, client: nb.Client) -> None:
    """Exactly 14 references pass the client and the server."""
    task = await client.submit("a banana cat", images=[make_png()] * 14)
    assert emu.tasks[task.id].reference_count == 14
    await task


async def test_bad_task_ids_are_refused_before_sending(emu: Emulator, client: nb.Client) -> None:
    """get() and task() refuse an empty task id with InvalidRequestError naming task_id."""
    with pytest.raises(nb.InvalidRequestError) as info:
        await client.get("  ")
    assert info.value.field == "task_id"
    with pytest.raises(nb.InvalidRequestError):
        client.task("")
    assert emu.requests == []


async def test_bad_client_options_are_refused() -> None:
    """A base URL that is not http(s) raises InvalidRequestError naming base_url."""
    with pytest.raises(nb.InvalidRequestError) as info:
        nb.Client("sk-test", base_url="ftp://example.com")
    assert info.value.field == "base_url"


def test_a_lower_case_image_size_is_normalised() -> None:
    """`1k` is read as 1K (as the command line and users type it), not refused."""
    assert nb.GenerationRequest(prompt="x", image_size="2k").image_size == "2K"


def test_a_file_name_that_cannot_be_encoded_is_replaced(tmp_path: Path) -> None:
    """A path whose name holds an undecodable byte is sent under a safe name, not refused."""
    path = tmp_path / "ref-\udcff.png"
    path.write_bytes(make_png())
    request = nb.GenerationRequest(prompt="x", images=[path])
    (ref,) = request.wire_references()
    assert getattr(ref, "filename", None) == "image.png"
