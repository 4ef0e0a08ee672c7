"""The README's first emulator test works as written (issue 19): with trio installed too, the
pytest plugin's default ``anyio_backend`` keeps it on asyncio, with no conftest.py to copy."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def first_emulator_test() -> str:
    """Return the first python block of the README's "Testing with the emulator" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing with the emulator", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def child_env() -> dict[str, str]:
    """The environment of a user's own pytest run: no settings of ours, no proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NANOBANANA_"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


async def run_pytest(folder: Path) -> str:
    """Run pytest in *folder* (a user's project); return its output, failing on a failure."""
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio"],
            cwd=folder,
            env=child_env(),
            check=False,
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    return output


async def test_the_readme_snippet_passes_as_written_with_trio_installed(tmp_path: Path) -> None:
    """The snippet, alone in a project with no conftest.py, passes once: on asyncio only."""
    pytest.importorskip("trio")  # the case of the issue: anyio would also run it on trio
    (tmp_path / "test_readme.py").write_text(first_emulator_test(), encoding="utf-8")
    output = await run_pytest(tmp_path)
    assert "1 passed" in output
    assert "trio" not in output


async def test_a_conftest_anyio_backend_still_decides(tmp_path: Path) -> None:
    """A project's own ``anyio_backend`` wins over the plugin's default."""
    pytest.importorskip("trio")
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n\n"
        "@pytest.fixture(params=['asyncio', 'trio'])\n"
        "def anyio_backend(request):\n"
        "    return request.param\n",
        encoding="utf-8",
    )
    (tmp_path / "test_backends.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.anyio\n"
        "async def test_backend(anyio_backend):\n"
        "    assert anyio_backend in ('asyncio', 'trio')\n",
        encoding="utf-8",
    )
    output = await run_pytest(tmp_path)
    assert "2 passed" in output
