"""One list of models agrees everywhere, and misspelt literals are type errors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import nanobanana_async as nb
from nanobanana_async import _catalogue
from nanobanana_async._models import KnownModel
from nanobanana_async.cli._checks import KNOWN_MODELS
from nanobanana_async.testing import _emulator

PACKAGE = Path(nb.__file__).parent


def test_the_client_cli_emulator_and_types_share_one_list() -> None:
    """MODEL_COSTS, the CLI's known models, the emulator's and the typed names are one list."""
    assert dict(nb.credits.MODEL_COSTS) == dict(_catalogue.DOCUMENTED_PRICES)
    assert dict(_emulator.DOCUMENTED_MODELS) == dict(_catalogue.DOCUMENTED_PRICES)
    assert set(KNOWN_MODELS) == set(_catalogue.DOCUMENTED_PRICES)
    assert set(get_args(KnownModel)) == set(_catalogue.DOCUMENTED_PRICES)
    assert set(get_args(nb.ImageSize)) == set(_catalogue.IMAGE_SIZES)
    ratios = set(_catalogue.ASPECT_RATIOS) | set(_catalogue.EXTRA_ASPECT_RATIOS) | {"auto"}
    assert set(get_args(nb.AspectRatio)) == ratios
    assert not set(_catalogue.REPORTED_MODELS) & set(KNOWN_MODELS)


def test_the_catalogue_and_the_emulator_import_no_client_code() -> None:
    """The catalogue imports nothing of the package; the emulator imports only the catalogue."""

    def package_imports(path: Path) -> set[str]:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.add("." * node.level + (node.module or ""))
        return found

    assert package_imports(PACKAGE / "_catalogue.py") == set()
    emulator_imports = set()
    for path in (PACKAGE / "testing").glob("*.py"):
        if path.name == "_pytest_plugin.py":
            continue  # the plugin's fixtures make clients; the server is the rest
        emulator_imports |= {name for name in package_imports(path) if name.startswith("..")}
    assert emulator_imports == {".._catalogue"}


SNIPPET = """
import nanobanana_async as nb


async def main(client: nb.Client, name: str) -> None:
    await client.submit("x", model="nano-banana-typo")  # line 6: error
    await client.submit("x", image_size="3K")  # line 7: error
    await client.submit("x", aspect_ratio="16:10")  # line 8: error
    await client.submit("x", model=name)  # line 9: error (a plain str)
    nb.GenerationRequest(prompt="x", model="nano-banan")  # line 10: error
    nb.GenerationRequest(prompt="x", image_size="3K")  # line 11: error
    await client.submit("x", model=nb.CustomModel("nano-banana-2"))
    await client.submit("x", model=nb.CustomModel(name), image_size="4K", aspect_ratio="1:4")
    await client.generate("x", model="nano-banana-pro", aspect_ratio="21:9", image_size="2K")
    nb.GenerationRequest(prompt="x", model=nb.CustomModel("nano-banana-pro-vip"))
"""


def test_mypy_catches_misspelt_literals_and_accepts_the_escape_hatch(tmp_path: Path) -> None:
    """mypy --strict flags each misspelt model, size and ratio, and passes CustomModel."""
    pytest.importorskip("mypy")
    (tmp_path / "x.py").write_text(SNIPPET)
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "mypy.ini",
            "--no-incremental",
            "x.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    lines = {
        int(line.split(":")[1])
        for line in result.stdout.splitlines()
        if line.startswith("x.py:") and ": error:" in line
    }
    assert lines == {6, 7, 8, 9, 10, 11}, result.stdout + result.stderr


def test_custom_model_is_checked_at_run_time_like_any_name() -> None:
    """CustomModel is a plain str at run time, and a bad name is still refused before sending."""
    assert nb.CustomModel("nano-banana-2") == "nano-banana-2"
    with pytest.raises(nb.InvalidRequestError, match="model"):
        nb.GenerationRequest(prompt="x", model=nb.CustomModel("no spaces allowed"))
    with pytest.raises(nb.InvalidRequestError, match="image_size"):
        nb.GenerationRequest(prompt="x", image_size="3K")  # type: ignore[arg-type]
