"""A narrower front door (issue 19): the `DEFAULT_*` constants, the gallery, the batch and retry
event types, the rarer errors, the credit types and the limiter-writing types live in public
submodules; their old root names still work, with a `DeprecationWarning` naming the new home."""

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
    **dict.fromkeys(["RetryEvent", "SubmitHooks"], "nanobanana_async.events"),
    **dict.fromkeys(["GALLERY_NAME", "Gallery", "write_gallery"], "nanobanana_async.gallery"),
    **dict.fromkeys(
        [
            "ClientClosedError",
            "ClientStateError",
            "DownloadError",
            "LimiterUnavailableError",
            "NotFoundError",
            "PermissionDeniedError",
            "SubmitAbandonedError",
            "SubmitHookError",
        ],
        "nanobanana_async.errors",
    ),
    **dict.fromkeys(["CreditUsage", "MODEL_COSTS"], "nanobanana_async.credits"),
    "ImageInput": "nanobanana_async.inputs",
    **dict.fromkeys(["BaseLimiter", "Lease", "RequestKind"], "nanobanana_async.limiters"),
}


#: The names DESIGN.md's "Public surface" promises at the root, and the few kept beside them.
ROOT = {
    "Client", "Task", "PollPolicy", "RetryPolicy", "Timeouts", "Limiter", "GenerationRequest",
    "TaskSnapshot", "TaskStatus", "GeneratedImage", "TaskResult",
    "NanoBananaError", "InvalidRequestError", "TransportError", "ProtocolError",
    "SubmitUncertainError", "BudgetExceededError", "APIStatusError", "BadRequestError",
    "AuthenticationError", "InsufficientCreditsError", "RateLimitError", "ServerError",
    "TaskError", "TaskFailedError", "TaskTimeoutError",
    "Batch", "run_batch", "RedisLimiter", "ModelName", "CustomModel", "AspectRatio", "ImageSize",
}  # fmt: skip


def test_the_root_is_narrower() -> None:
    """The root exports at most 36 names (it had 70): the design's surface, none of the moved."""
    assert len(nb.__all__) <= 36
    assert set(nb.__all__) == ROOT | {"__version__"}
    assert set(NEW_HOMES).isdisjoint(nb.__all__)


def test_every_moved_name_is_listed_here() -> None:
    """The root's table of moved names is exactly the one this test checks."""
    assert nb._MOVED == NEW_HOMES


def test_the_errors_module_holds_the_whole_tree() -> None:
    """`nanobanana_async.errors` exports every error, the root's ones as the same classes."""
    exported = {getattr(nb.errors, name) for name in nb.errors.__all__}
    assert len(exported) == 23
    assert all(issubclass(error, nb.NanoBananaError) for error in exported)
    for name in nb.__all__:
        value = getattr(nb, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert getattr(nb.errors, name) is value


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
    """`from nanobanana_async import BatchEvent` (or an error) in a new process warns, imports."""
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from nanobanana_async import BatchEvent, DEFAULT_REQUEST_TIMEOUT, NotFoundError\n"
        "from nanobanana_async.events import BatchEvent as New\n"
        "from nanobanana_async.errors import NotFoundError as Moved\n"
        "assert BatchEvent is New and DEFAULT_REQUEST_TIMEOUT == 60.0 and NotFoundError is Moved\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "DeprecationWarning" in result.stderr
    assert "nanobanana_async.events.BatchEvent" in result.stderr
    assert "nanobanana_async.errors.NotFoundError" in result.stderr


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    """A name that never existed raises AttributeError, with no warning."""
    with pytest.raises(AttributeError, match="Clinet"):
        nb.Clinet  # type: ignore[attr-defined]  # noqa: B018
