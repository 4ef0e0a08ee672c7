"""The docs site: a complete API reference and nav, links that resolve, charts that draw."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import nanobanana_async
import nanobanana_async.testing

from ._samples import DOCS, ROOT

REFERENCE = DOCS / "reference"
# [text](target) and ![alt](target), without the URL schemes and in-page anchors.
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def _documented(module: str) -> set[str]:
    text = "\n".join(p.read_text() for p in REFERENCE.glob("*.md"))
    return set(re.findall(rf"^::: {re.escape(module)}\.(\w+)\s*$", text, re.MULTILINE))


@pytest.mark.parametrize(
    "module",
    [
        nanobanana_async,
        nanobanana_async.credits,
        nanobanana_async.defaults,
        nanobanana_async.errors,
        nanobanana_async.events,
        nanobanana_async.gallery,
        nanobanana_async.inputs,
        nanobanana_async.limiters,
        nanobanana_async.testing,
    ],
)
def test_reference_covers_all(module: object) -> None:
    """Every name in the module's __all__ has an entry in the API reference, and nothing else.

    The root's errors have theirs on the errors page, as ``nanobanana_async.errors.NAME``.
    """
    exported = set(module.__all__)  # type: ignore[attr-defined]
    documented = _documented(module.__name__)  # type: ignore[attr-defined]
    if module is nanobanana_async:
        errors = nanobanana_async.errors
        documented |= _documented(errors.__name__) & exported
        assert {n for n in exported if n in errors.__all__} <= _documented(errors.__name__)
    assert documented == exported


def test_nav_lists_every_page() -> None:
    """mkdocs.yml's nav names every page under docs/, and names no page that is missing."""
    config = (ROOT / "mkdocs.yml").read_text()
    in_nav = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", config, re.MULTILINE))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert in_nav == pages


def _local_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    targets = [m["target"] for m in LINK.finditer(text)]
    return [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+:|^#", t)]


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))], ids=lambda p: p.name
)
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link and image of README.md and the docs points at a file that exists."""
    missing = [t for t in _local_links(path) if not (path.parent / t).exists()]
    assert missing == []


def test_charts_are_committed_and_small() -> None:
    """The benchmark charts the docs show are PNG files of at most 150 KB."""
    charts = sorted((DOCS / "img" / "benchmarks").glob("*.png"))
    assert [c.name for c in charts] == ["overhead.png", "polling.png", "scale.png"]
    for chart in charts:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert chart.stat().st_size <= 150 * 1024


def test_plots_redraw_from_results(tmp_path: Path) -> None:
    """benchmarks.plots draws one PNG per charted section of a results file, and no other."""
    pytest.importorskip("matplotlib")
    from benchmarks import plots

    document = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    written = plots.draw(document, tmp_path / "all")
    assert sorted(p.name for p in written) == ["overhead.png", "polling.png", "scale.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)

    only_polling = {**document, "sections": {"polling": document["sections"]["polling"]}}
    assert [p.name for p in plots.draw(only_polling, tmp_path / "one")] == ["polling.png"]
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["polling.png"]
