"""The suite's own pytest configuration: a hung test cannot take the tests after it down."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HUNG_THEN_FINE = """
import asyncio

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _stubborn() -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


@pytest.mark.timeout(1)
async def test_leaves_a_task_that_ignores_cancellation() -> None:
    # Closing the event loop's runner after this test waits on the task for ever.
    asyncio.get_running_loop().create_task(_stubborn())


async def test_after_the_hang() -> None:
    await asyncio.sleep(0)
"""


def test_a_hung_test_fails_alone_and_the_next_one_runs_on_a_fresh_loop(tmp_path: Path) -> None:
    """Under the project's pytest settings, a test hung in teardown fails; the next one passes."""
    (tmp_path / "test_hang.py").write_text(textwrap.dedent(HUNG_THEN_FINE))
    argv = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml")]
    # One worker, so that both tests run in it, one after the other.
    argv += ["--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-n", "1", "-rA"]
    proc = subprocess.run(
        [*argv, str(tmp_path / "test_hang.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "PASSED test_hang.py::test_after_the_hang" in out, out
    assert "1 failed, 1 passed" in out, out
    assert "Runner is closed" not in out, out
