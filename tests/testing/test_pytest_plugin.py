"""The pytest plugin's fixtures: an emulator, and a client wired to it at its speed."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

pytestmark = pytest.mark.anyio

SPEED = 1000.0


@pytest.fixture
def nanobanana_emulator_options() -> dict[str, Any]:
    """Give the fixture's emulator small images (its speed stays the default)."""
    return {"image_downscale": 8}


async def test_the_client_fixture_talks_to_the_emulator_at_its_speed(
    nanobanana_client: nb.Client, nanobanana_emulator: Emulator
) -> None:
    """`nanobanana_client` is open on the emulator's URL and key, and polls at its speed."""
    result = await nanobanana_client.generate(
        "a banana cat", model="nano-banana-pro", image_size="4K"
    )
    assert result.credits_cost == 20
    assert nanobanana_emulator.ledger.credits_charged == 20
    records = [r for r in nanobanana_emulator.requests if r.task_id is not None]
    create = next(r for r in records if r.endpoint == "create")
    first_poll = next(r for r in records if r.endpoint == "result")
    # A client polling at real-time pace would first poll after tens of real seconds, that is
    # tens of thousands of emulated ones; at the emulator's speed it polls within tens.
    assert first_poll.time - create.time < 5 * SPEED
    assert not nanobanana_client.closed


@pytest.fixture
def nanobanana_client_options() -> dict[str, Any]:
    """Cap the fixture's client at one generation in flight."""
    return {"max_concurrency": 1}


async def test_client_options_are_merged_over_the_defaults(nanobanana_client: nb.Client) -> None:
    """`nanobanana_client_options` reaches the client (here: one generation in flight)."""
    assert nanobanana_client.limiter.max_concurrency == 1


PLUGIN_USER_TESTS = '''
    import pytest

    import nanobanana_async as nb


    @pytest.mark.asyncio
    async def test_on_pytest_asyncio(nanobanana_client, nanobanana_emulator):
        """Runs under pytest-asyncio's strict mode."""
        result = await nanobanana_client.generate("a banana cat")
        assert result.credits_cost == 15
        assert nanobanana_emulator.ledger.credits_charged == 15


    @pytest.mark.anyio
    async def test_on_anyio(nanobanana_client):
        """Runs under anyio's plugin in the same session."""
        result = await nanobanana_client.generate("a banana dog", model="nano-banana-fast")
        assert result.credits_cost == 5


    @pytest.fixture
    def anyio_backend():
        return "asyncio"
'''


async def test_the_fixtures_work_under_pytest_asyncio_strict_mode(tmp_path: Path) -> None:
    """A project on pytest-asyncio in strict mode (and anyio beside it) can use the fixtures."""
    pytest.importorskip("pytest_asyncio")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\n"
        "asyncio_mode = strict\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n",
        encoding="utf-8",
    )
    (tmp_path / "test_user.py").write_text(textwrap.dedent(PLUGIN_USER_TESTS), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NANOBANANA_"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
            cwd=tmp_path,
            env=env,
            check=False,
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "2 passed" in output
