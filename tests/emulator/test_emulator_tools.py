"""The pytest fixture, the provider's own curl example, and `serve()` as a process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.streams.text import TextReceiveStream

import nanobanana_async.testing
from nanobanana_async.testing import Emulator

from ._helpers import create, make_png, text_to_image, wait_until_done

pytestmark = pytest.mark.anyio

PROJECT_ROOT = Path(nanobanana_async.testing.__file__).resolve().parents[2]


@pytest.fixture
def nanobanana_emulator_options() -> dict[str, Any]:
    """Customise the plugin's emulator for this module."""
    return {"credits": 40}


def test_plugin_is_registered() -> None:
    """The pytest11 entry point names the fixture module."""
    values = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert "nanobanana_async.testing._pytest_plugin" in values


async def test_fixture_yields_a_started_fast_emulator(nanobanana_emulator: Emulator) -> None:
    """The fixture yields a started emulator at speed 1000 with the options fixture applied."""
    emu = nanobanana_emulator
    assert emu.ledger.balance == 40
    async with aiohttp.ClientSession() as session:
        status, body = await create(session, emu, json_body=text_to_image())
        assert status == 200
        task_id = body["data"]["id"]
        # 8-20 emulated seconds take at most ~20 ms at speed 1000.
        final = (await wait_until_done(session, emu, task_id, max_polls=2000))[-1]
    assert final["status"] == "succeeded"
    assert emu.now() < 60_000


async def test_provider_curl_example(tmp_path: Path) -> None:
    """The provider's multipart curl example, run with the real curl, creates a task we can poll."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    ref = tmp_path / "ref.png"
    ref.write_bytes(make_png(4, 3))
    async with Emulator(api_key="api-key", speed=1000.0, duration=5.0) as emu:
        created = await anyio.run_process(
            [
                curl, "-sS", "--max-time", "20",
                "-X", "POST", f"{emu.base_url}/api/v1/image/nano-banana",
                "-H", "Authorization: Bearer api-key",
                "-F", "prompt=A banana cat in a spacesuit on the moon",
                "-F", "model=nano-banana-pro",
                "-F", "mode=image-to-image",
                "-F", "aspectRatio=auto",
                "-F", "imageSize=1K",
                "-F", f"imageFile=@{ref}",
                "-F", "imageUrl=https://example.com/ref.png",
            ]
        )  # fmt: skip
        data = json.loads(created.stdout)["data"]
        assert (data["status"], data["credits_cost"], data["progress"]) == ("running", 20, 0)
        record = emu.requests[-1]
        assert record.fields == {
            "prompt": "A banana cat in a spacesuit on the moon",
            "model": "nano-banana-pro",
            "mode": "image-to-image",
            "aspectRatio": "auto",
            "imageSize": "1K",
            "imageFile": ["ref.png"],
            "imageUrl": ["https://example.com/ref.png"],
        }
        assert emu.tasks[data["id"]].reference_count == 2
        body = json.dumps({"taskId": data["id"]})
        for _ in range(1000):
            polled = await anyio.run_process(
                [
                    curl, "-sS", "--max-time", "20",
                    "-X", "POST", f"{emu.base_url}/api/v1/image/nano-banana/result",
                    "-H", "Content-Type: application/json",
                    "-H", "Authorization: Bearer api-key",
                    "-d", body,
                ]
            )  # fmt: skip
            result = json.loads(polled.stdout)["data"]
            if result["status"] != "running":
                break
        assert result["status"] == "succeeded"
        assert result["results"][0]["content"] == "A banana cat in a spacesuit on the moon"


async def test_serve_runs_until_terminated() -> None:
    """serve() prints its URL and key, answers requests, and exits cleanly on SIGTERM."""
    code = (
        "from nanobanana_async.testing._serve import serve; serve(port=0, api_key='k', speed=1000)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    async with await anyio.open_process(
        [sys.executable, "-c", code], env=env, stderr=None
    ) as process:
        assert process.stdout is not None
        lines: list[str] = []
        with anyio.fail_after(30):
            buffer = ""
            async for text in TextReceiveStream(process.stdout):
                buffer += text
                if buffer.count("\n") >= 2:
                    break
        lines = buffer.splitlines()
        assert lines[0].startswith("Nano Banana emulator on http://127.0.0.1:")
        assert lines[1] == "API key: k"
        base_url = lines[0].rsplit(" ", 1)[1]
        async with aiohttp.ClientSession() as session:
            async with session.post(
                base_url + "/api/v1/image/nano-banana",
                json=text_to_image(),
                headers={"Authorization": "Bearer k"},
            ) as response:
                assert response.status == 200
                assert (await response.json())["data"]["status"] == "running"
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await process.wait() == 0
