"""A narrower front door (issue 19): the `DEFAULT_*` constants, the gallery, the batch event types
and the limiter-writing types live in public submodules; their old root names still work, with a
`DeprecationWarning` naming the new home."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import nanobanana_async as nb

#: Where each moved name lives now.
NEW_HOMES = {
    **dict.fromkeys(
        [
            "DEFAULT_CONNECT_TIMEOUT",
            "DEFAULT_DOWNLOAD_TIMEOUT",
            "DEFAULT_GALLERY_REFRESH",
            "DEFAULT_MAX_DOWNLOAD_BYTES",
            "DEFAULT_MAX_REPLY_BYTES",
            "DEFAULT_POLL_JITTER",
            "DEFAULT_POLL_MAX_INTERVAL",
            "DEFAULT_POLL_MIN_INTERVAL",
            "DEFAULT_REQUEST_TIMEOUT",
            "DEFAULT_RETRY_ATTEMPTS",
            "DEFAULT_RETRY_DEADLINE",
            "DEFAULT_RETRY_INITIAL_BACKOFF",
            "DEFAULT_RETRY_MAX_BACKOFF",
            "DEFAULT_TASK_TIMEOUT",
        ],
        "nanobanana_async.defaults",
    ),
    **dict.fromkeys(
        ["BatchEvent", "BatchEventKind", "BatchItem", "BatchItemStatus", "BatchSummary"],
        "nanobanana_async.events",
    ),
    **dict.fromkeys(["GALLERY_NAME", "Gallery", "write_gallery"], "nanobanana_async.gallery"),
    **dict.fromkeys(["BaseLimiter", "Lease", "RequestKind"], "nanobanana_async.limiters"),
}


def test_the_root_is_narrower() -> None:
    """The root exports at most 47 names (it had 70), none of the moved ones."""
    assert len(nb.__all__) <= 47
    assert set(NEW_HOMES).isdisjoint(nb.__all__)


@pytest.mark.parametrize(("name", "home"), sorted(NEW_HOMES.items()))
def test_a_moved_name_lives_in_its_submodule(name: str, home: str) -> None:
    """Each moved name is exported by its new public submodule."""
    module = importlib.import_module(home)
    assert name in module.__all__
    assert getattr(module, name) is not None


@pytest.mark.parametrize(("name", "home"), sorted(NEW_HOMES.items()))
def test_the_old_name_still_works_with_a_deprecation_warning(name: str, home: str) -> None:
    """`nb.NAME` returns the same object as its new home, warning where it went."""
    with pytest.warns(DeprecationWarning, match=rf"{home}\.{name}"):
        value = getattr(nb, name)
    assert value is getattr(importlib.import_module(home), name)


def test_from_import_of_an_old_name_warns_and_works() -> None:
    """`from nanobanana_async import BatchEvent` in a fresh interpreter warns and still imports."""
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from nanobanana_async import BatchEvent, DEFAULT_REQUEST_TIMEOUT\n"
        "from nanobanana_async.events import BatchEvent as New\n"
        "assert BatchEvent is New and DEFAULT_REQUEST_TIMEOUT == 60.0\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "DeprecationWarning" in result.stderr
    assert "nanobanana_async.events.BatchEvent" in result.stderr


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    """A name that never existed raises AttributeError, with no warning."""
    with pytest.raises(AttributeError, match="Clinet"):
        nb.Clinet  # type: ignore[attr-defined]  # noqa: B018
