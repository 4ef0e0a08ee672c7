"""The create endpoint: bodies, validation, authentication and credits."""

from __future__ import annotations

import base64
import io
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import nanobanana_async.testing as testing
from nanobanana_async.testing import Emulator

from ._helpers import CREATE, RESULT, auth, create, make_png, poll, text_to_image

pytestmark = pytest.mark.anyio

PNG = make_png()
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
MB10 = 10 * 1024 * 1024


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as client:
        yield client


def test_all_is_complete_and_sorted() -> None:
    """`__all__` lists every public name of the package, sorted case-insensitively."""
    # "@py_builtins" and the like come from pytest rewriting the plugin's package.
    public = {n for n in vars(testing) if not n.startswith(("_", "@")) and n != "annotations"}
    assert set(testing.__all__) == public
    assert testing.__all__ == sorted(testing.__all__, key=str.lower)


def test_options_are_validated() -> None:
    """Nonsensical options are refused at construction."""
    for options in (
        {"speed": 0},
        {"failure_rate": 1.5},
        {"tail_rate": -0.1},
        {"duration": -1.0},
        {"image_downscale": 0},
        {"progress": "wobbly"},
        {"error_style": "xml"},
        {"envelope": "wrapped"},
        {"models": {}},
        {"failure_reasons": ()},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each option has its own message
            Emulator(**options)


async def test_lifecycle_guards() -> None:
    """base_url needs a started emulator, start works once and aclose is idempotent."""
    emu = Emulator()
    with pytest.raises(RuntimeError):
        _ = emu.base_url
    await emu.start()
    with pytest.raises(RuntimeError):
        await emu.start()
    assert emu.base_url.startswith("http://127.0.0.1:")
    assert not emu.base_url.endswith("/")
    await emu.aclose()
    await emu.aclose()


async def test_create_multipart_answers_the_documented_shape(
    session: aiohttp.ClientSession,
) -> None:
    """A multipart text-to-image create charges the model cost and answers the documented body."""
    async with Emulator(credits=100) as emu:
        form = aiohttp.FormData()
        form.add_field("prompt", "A banana cat in a spacesuit on the moon")
        form.add_field("model", "nano-banana-pro")
        status, body = await create(session, emu, form=form)
        assert status == 200
        data = body["data"]
        assert data == {
            "id": data["id"],
            "results": [],
            "progress": 0,
            "status": "running",
            "failure_reason": None,
            "error": None,
            "credits_cost": 20,
        }
        assert set(body) == {"data"}
        assert emu.ledger.balance == 80
        task = emu.tasks[data["id"]]
        assert (task.model, task.mode, task.aspect_ratio, task.image_size) == (
            "nano-banana-pro",
            "text-to-image",
            "auto",
            "1K",
        )
        assert emu.requests[-1].fields == {
            "prompt": "A banana cat in a spacesuit on the moon",
            "model": "nano-banana-pro",
        }


async def test_create_multipart_with_repeated_files_and_urls(
    session: aiohttp.ClientSession,
) -> None:
    """Repeated imageFile parts and imageUrl fields all count as references."""
    async with Emulator() as emu:
        form = aiohttp.FormData()
        form.add_field("prompt", "merge these")
        form.add_field("model", "nano-banana")
        form.add_field("mode", "image-to-image")
        form.add_field("imageFile", PNG, filename="a.png", content_type="image/png")
        form.add_field("imageFile", PNG, filename="b.jpg", content_type="image/jpeg")
        form.add_field("imageFile", PNG, filename="c.webp")  # octet-stream: extension decides
        form.add_field("imageUrl", "https://example.com/1.png")
        form.add_field("imageUrl", "http://example.com/2.png")
        status, body = await create(session, emu, form=form)
        assert status == 200, body
        assert emu.tasks[body["data"]["id"]].reference_count == 5
        fields = emu.requests[-1].fields
        assert fields is not None
        assert fields["imageFile"] == ["a.png", "b.jpg", "c.webp"]
        assert fields["imageUrl"] == ["https://example.com/1.png", "http://example.com/2.png"]


async def test_create_json_with_legacy_image_data_and_url_lists(
    session: aiohttp.ClientSession,
) -> None:
    """A JSON create accepts imageData and imageUrl as a string or a list of strings."""
    async with Emulator() as emu:
        body = text_to_image(mode="image-to-image", imageData=DATA_URL)
        status, answer = await create(session, emu, json_body=body)
        assert status == 200, answer
        assert emu.tasks[answer["data"]["id"]].reference_count == 1
        body = text_to_image(
            mode="image-to-image",
            imageData=[DATA_URL, DATA_URL],
            imageUrl=["https://example.com/a.png", "https://example.com/b.png"],
        )
        status, answer = await create(session, emu, json_body=body)
        assert status == 200, answer
        assert emu.tasks[answer["data"]["id"]].reference_count == 4
        assert emu.requests[-1].fields == body


async def test_task_ids_are_opaque_uuid_like_and_seeded(session: aiohttp.ClientSession) -> None:
    """Task ids look like `3-<uuid4>` and the same seed gives the same ids and durations."""
    runs = []
    for _ in range(2):
        async with Emulator(seed=7) as emu:
            ids = []
            for _ in range(3):
                status, body = await create(session, emu, json_body=text_to_image())
                assert status == 200
                ids.append(body["data"]["id"])
            runs.append([(i, emu.tasks[i].duration) for i in ids])
    assert runs[0] == runs[1]
    for task_id, _ in runs[0]:
        assert re.fullmatch(
            r"3-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", task_id
        )
        assert uuid.UUID(task_id[2:]).version == 4
    async with Emulator(seed=8) as emu:
        status, body = await create(session, emu, json_body=text_to_image())
        assert body["data"]["id"] != runs[0][0][0]


def _form(*fields: tuple[str, Any], files: tuple[tuple[str, bytes, str | None], ...] = ()) -> Any:
    form = aiohttp.FormData()
    for name, value in fields:
        form.add_field(name, value)
    for filename, raw, content_type in files:
        # aiohttp warns (an error here) about large raw bytes bodies; a file object streams.
        content = io.BytesIO(raw) if len(raw) > 1_000_000 else raw
        if content_type is None:
            form.add_field("imageFile", content, filename=filename)
        else:
            form.add_field("imageFile", content, filename=filename, content_type=content_type)
    return form


BASE = (("prompt", "a cat"), ("model", "nano-banana"))
I2I = (*BASE, ("mode", "image-to-image"))

# (id, JSON body or a factory of a multipart form, words the 400 message must contain)
INVALID: list[tuple[str, Any, str]] = [
    ("no-prompt-json", {"model": "nano-banana"}, "prompt"),
    ("blank-prompt-json", text_to_image(prompt="  \n "), "prompt"),
    ("no-prompt-form", lambda: _form(("model", "nano-banana")), "prompt"),
    ("no-model-json", {"prompt": "a cat"}, "model"),
    ("no-model-form", lambda: _form(("prompt", "a cat")), "model"),
    ("invalid-model", text_to_image(model="nano-banana-9000"), "invalid model"),
    ("bad-mode", text_to_image(mode="sketch-to-image"), "mode"),
    ("i2i-without-reference-json", text_to_image(mode="image-to-image"), "image-to-image"),
    ("i2i-without-reference-form", lambda: _form(*I2I), "image-to-image"),
    (
        "fifteen-references",
        text_to_image(
            mode="image-to-image",
            imageUrl=[f"https://example.com/{i}.png" for i in range(10)],
            imageData=[DATA_URL] * 5,
        ),
        "too many",
    ),
    (
        "fifteen-references-form",
        lambda: _form(
            *I2I,
            *[("imageUrl", f"https://example.com/{i}.png") for i in range(8)],
            files=tuple((f"{i}.png", PNG, "image/png") for i in range(7)),
        ),
        "too many",
    ),
    (
        "file-over-10mb",
        lambda: _form(*I2I, files=(("big.png", bytes(MB10 + 1), "image/png"),)),
        "10 MB",
    ),
    ("gif-file", lambda: _form(*I2I, files=(("a.gif", PNG, "image/gif"),)), "type"),
    ("txt-extension", lambda: _form(*I2I, files=(("notes.txt", PNG, None),)), "type"),
    (
        "heic-on-non-pro",
        lambda: _form(*I2I, files=(("shot.heic", PNG, "image/heic"),)),
        "type",
    ),
    (
        "ftp-url",
        text_to_image(mode="image-to-image", imageUrl="ftp://example.com/a.png"),
        "imageUrl",
    ),
    ("relative-url", text_to_image(mode="image-to-image", imageUrl=["/a.png"]), "imageUrl"),
    ("plain-base64", text_to_image(mode="image-to-image", imageData=DATA_URL[22:]), "imageData"),
    (
        "data-url-not-base64",
        text_to_image(mode="image-to-image", imageData="data:image/png,rawbytes"),
        "imageData",
    ),
    (
        "data-url-bad-base64",
        text_to_image(mode="image-to-image", imageData="data:image/png;base64,@@@"),
        "imageData",
    ),
    ("image-size-8k", text_to_image(imageSize="8K"), "imageSize"),
    ("image-size-lower", text_to_image(imageSize="1k"), "imageSize"),
    ("ratio-malformed", text_to_image(aspectRatio="wide"), "aspectRatio"),
    ("ratio-unsupported", text_to_image(aspectRatio="7:5"), "aspectRatio"),
    (
        "ratio-new-on-documented",
        text_to_image(model="nano-banana-pro", aspectRatio="1:4"),
        "aspectRatio",
    ),
    ("prompt-not-a-string", text_to_image(prompt=42), "prompt"),
    ("url-list-of-numbers", text_to_image(imageUrl=[1, 2]), "imageUrl"),
    ("json-array-body", ["a cat"], "JSON object"),
]


@pytest.mark.parametrize(
    ("json_or_form", "words"), [(c[1], c[2]) for c in INVALID], ids=[c[0] for c in INVALID]
)
async def test_invalid_creates_answer_400_and_charge_nothing(
    session: aiohttp.ClientSession, json_or_form: Any, words: str
) -> None:
    """Each validation rule answers 400 naming the problem; it counts but charges nothing."""
    async with Emulator(credits=100) as emu:
        if callable(json_or_form):
            status, body = await create(session, emu, form=json_or_form())
        else:
            status, body = await create(session, emu, json_body=json_or_form)
        assert status == 400
        assert words.lower() in body["error"].lower()
        assert emu.ledger.creates_received == 1
        assert emu.ledger.tasks_created == 0
        assert emu.ledger.balance == 100
        assert emu.tasks == {}
        assert emu.requests[-1].status == 400


async def test_body_that_is_not_json_answers_400(session: aiohttp.ClientSession) -> None:
    """A create body that is neither multipart nor JSON answers 400."""
    async with Emulator() as emu:
        url = emu.base_url + CREATE
        async with session.post(url, data=b"{prompt", headers=auth(emu.api_key)) as response:
            assert response.status == 400
            assert "JSON" in (await response.json())["error"]


async def test_edge_values_that_are_accepted(session: aiohttp.ClientSession) -> None:
    """A 10 MB file, heic on pro, new ratios on new models and every documented ratio pass."""
    models = {"nano-banana-pro": 20, "nano-banana-2": 10}
    async with Emulator(models=models, credits=None) as emu:
        form = _form(
            ("prompt", "edge"),
            ("model", "nano-banana-pro"),
            ("mode", "image-to-image"),
            files=(("exact.png", bytes(MB10), "image/png"), ("shot.HEIC", PNG, None)),
        )
        status, body = await create(session, emu, form=form)
        assert status == 200, body
        for ratio in ("1:4", "4:1", "1:8", "8:1", "21:9"):
            body = text_to_image(model="nano-banana-2", aspectRatio=ratio)
            status, answer = await create(session, emu, json_body=body)
            assert (status, answer["data"]["credits_cost"]) == (200, 10)
        for ratio in ("auto", "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9"):
            for size in ("1K", "2K", "4K"):
                body = text_to_image(model="nano-banana-pro", aspectRatio=ratio, imageSize=size)
                status, answer = await create(session, emu, json_body=body)
                assert status == 200, answer
        # Empty optional fields mean their defaults.
        status, answer = await create(
            session, emu, json_body=text_to_image(model="nano-banana-pro", aspectRatio="", mode="")
        )
        assert status == 200
        assert emu.tasks[answer["data"]["id"]].aspect_ratio == "auto"


async def test_first_failing_rule_is_reported(session: aiohttp.ClientSession) -> None:
    """With several problems, the first in the documented order is the one reported."""
    async with Emulator() as emu:
        body = {"model": "nope", "imageSize": "9K"}
        status, answer = await create(session, emu, json_body=body)
        assert status == 400
        assert "prompt" in answer["error"]
        status, answer = await create(
            session, emu, json_body=text_to_image(model="nope", imageSize="9K")
        )
        assert "model" in answer["error"]


async def test_missing_and_wrong_keys_answer_401(session: aiohttp.ClientSession) -> None:
    """No key or an unknown key answers 401 on both endpoints, before any processing."""
    async with Emulator() as emu:
        for key in (None, "wrong-key"):
            status, body = await create(session, emu, json_body=text_to_image(), key=key)
            assert status == 401
            assert "authenticated" in body["error"]
            status, body = await poll(session, emu, "3-anything", key=key)
            assert status == 401
        async with session.post(
            emu.base_url + CREATE, json=text_to_image(), headers={"Authorization": emu.api_key}
        ) as response:
            assert response.status == 401  # the Bearer scheme is required
        assert emu.ledger.creates_received == 0
        assert emu.ledger.polls_received == 0
        assert [r.api_key_valid for r in emu.requests] == [False] * 5
        assert emu.api_key not in repr(emu.requests)


async def test_insufficient_credits_answer_402(session: aiohttp.ClientSession) -> None:
    """A create costing more than the balance answers 402 and charges nothing."""
    async with Emulator(credits=24) as emu:
        status, body = await create(session, emu, json_body=text_to_image(model="nano-banana-pro"))
        assert status == 200
        assert emu.ledger.balance == 4
        status, body = await create(session, emu, json_body=text_to_image(model="nano-banana-fast"))
        assert status == 402
        assert "credits" in body["error"]
        assert emu.ledger.balance == 4
        emu.set_balance(5)
        status, body = await create(session, emu, json_body=text_to_image(model="nano-banana-fast"))
        assert (status, emu.ledger.balance) == (200, 0)
        assert emu.ledger.creates_received == 3
        assert emu.ledger.tasks_created == 2
        assert emu.ledger.credits_charged == 25


async def test_unlimited_credits_and_other_keys(session: aiohttp.ClientSession) -> None:
    """Keys have separate ledgers; None means unlimited; a task is invisible to other keys."""
    async with Emulator(credits=None) as emu:
        other = emu.add_key("second-key", credits=15)
        with pytest.raises(ValueError, match="already"):
            emu.add_key("second-key")
        with pytest.raises(KeyError):
            emu.ledger_for("never-added")
        status, body = await create(session, emu, json_body=text_to_image(), key="second-key")
        assert status == 200
        assert emu.ledger_for("second-key") is other
        assert (other.balance, emu.ledger.balance, emu.ledger.tasks_created) == (0, None, 0)
        status, _ = await poll(session, emu, body["data"]["id"])
        assert status == 404
        status, _ = await poll(session, emu, body["data"]["id"], key="second-key")
        assert status == 200
        emu.set_balance(None, key="second-key")
        status, _ = await create(session, emu, json_body=text_to_image(), key="second-key")
        assert (status, other.balance, other.credits_charged) == (200, None, 30)


async def test_unknown_routes_and_methods(session: aiohttp.ClientSession) -> None:
    """Unknown paths answer 404 and wrong methods on API paths 405, recorded as `other`."""
    async with Emulator() as emu:
        async with session.get(emu.base_url + CREATE) as response:
            assert response.status == 405
        async with session.post(emu.base_url + "/api/v2/nothing") as response:
            assert response.status == 404
        async with session.get(emu.base_url + RESULT) as response:
            assert response.status == 405
        assert [r.endpoint for r in emu.requests] == ["other"] * 3
