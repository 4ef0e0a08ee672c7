"""The public surface: a sorted, complete __all__, docstrings everywhere, readable reprs."""

from __future__ import annotations
import __future__

import inspect
import types
from typing import Any

import nanobanana_async as nb


def _sort_key(name: str) -> tuple[bool, str]:
    # Case-insensitive, with dunders such as __version__ last (as __init__.py lists them).
    return (name.startswith("_"), name.lower())


#: The public submodules: names that are not in the root are exported by one of these.
SUBMODULES = (
    nb.credits,
    nb.defaults,
    nb.errors,
    nb.events,
    nb.gallery,
    nb.inputs,
    nb.limiters,
)


def _public_objects() -> dict[str, Any]:
    """Every exported object, by name: the root's, then its public submodules'."""
    found = {name: getattr(nb, name) for name in nb.__all__}
    for module in SUBMODULES:
        short = module.__name__.rpartition(".")[2]
        found |= {f"{short}.{name}": getattr(module, name) for name in module.__all__}
    return found


def test_all_is_sorted() -> None:
    """nanobanana_async.__all__ is sorted case-insensitively, dunders last, without duplicates."""
    assert nb.__all__ == sorted(nb.__all__, key=_sort_key)
    assert len(set(nb.__all__)) == len(nb.__all__)


def test_all_is_complete() -> None:
    """Every public name of the package is in __all__, and every name in __all__ exists."""
    public = {
        name
        for name, value in vars(nb).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)  # `from __future__ import annotations`
    }
    assert public - set(nb.__all__) == set()
    missing = [name for name in nb.__all__ if not hasattr(nb, name)]
    assert missing == []


def test_the_design_names_are_exported() -> None:
    """The names of the documented public surface are all public."""
    promised = {
        "Client", "Task", "TaskSnapshot", "TaskStatus", "TaskResult", "GeneratedImage",
        "GenerationRequest", "Timeouts", "RetryPolicy", "PollPolicy", "Limiter",
        "NanoBananaError", "InvalidRequestError", "TransportError", "ProtocolError",
        "SubmitUncertainError", "BudgetExceededError", "APIStatusError", "BadRequestError",
        "AuthenticationError", "InsufficientCreditsError", "RateLimitError", "ServerError",
        "TaskError", "TaskFailedError", "TaskTimeoutError",
    }  # fmt: skip
    assert promised <= set(nb.__all__)


def test_every_public_class_and_function_has_a_docstring() -> None:
    """Each exported class and function, and each public method or property, has a docstring."""
    undocumented: list[str] = []
    for name, value in _public_objects().items():
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if not (value.__doc__ or "").strip():
            undocumented.append(name)
        if not inspect.isclass(value):
            continue
        for attr, member in vars(value).items():
            if attr.startswith("_"):
                continue
            target = member.fget if isinstance(member, property) else member
            if isinstance(target, (staticmethod, classmethod)):
                target = target.__func__
            if not callable(target) or isinstance(target, type):
                continue
            if getattr(target, "__module__", "").startswith("nanobanana_async") and not (
                (target.__doc__ or "").strip()
            ):
                undocumented.append(f"{name}.{attr}")
    assert undocumented == []


def test_error_classes_follow_the_house_style() -> None:
    """Every exported exception is a NanoBananaError, ends in Error, and says when it is raised."""
    errors = {
        v for v in _public_objects().values() if inspect.isclass(v) and issubclass(v, Exception)
    }
    assert errors == {getattr(nb.errors, name) for name in nb.errors.__all__}
    assert len(errors) >= 23
    for error in errors:
        assert issubclass(error, nb.NanoBananaError), error
        assert error.__name__.endswith("Error")
        # The root says "Raised for every failure ..."; every other one "Raised when ...".
        prefix = "Raised for" if error is nb.NanoBananaError else "Raised when"
        assert (error.__doc__ or "").startswith(prefix), error.__name__
    assert issubclass(nb.InvalidRequestError, ValueError)
    assert issubclass(nb.TaskTimeoutError, TimeoutError)
    assert issubclass(nb.errors.ClientStateError, RuntimeError)
    for status_error in (
        nb.BadRequestError,
        nb.AuthenticationError,
        nb.InsufficientCreditsError,
        nb.errors.PermissionDeniedError,
        nb.errors.NotFoundError,
        nb.RateLimitError,
        nb.ServerError,
    ):
        assert issubclass(status_error, nb.APIStatusError)
    assert issubclass(nb.TaskFailedError, nb.TaskError)
    assert issubclass(nb.errors.SubmitHookError, nb.TaskError)
    assert issubclass(nb.errors.DownloadError, nb.ProtocolError)


def test_client_repr_reads_nanobanana_async_client() -> None:
    """repr(Client) starts with 'nanobanana_async.Client(' and shows its state."""
    client = nb.Client("sk-test", base_url="http://127.0.0.1:9/")
    text = repr(client)
    assert text.startswith("nanobanana_async.Client(")
    assert "base_url='http://127.0.0.1:9'" in text
    assert "closed=False" in text
    assert repr(nb.Limiter()).startswith("nanobanana_async.Limiter(")


def test_the_version_is_a_string() -> None:
    """__version__ is a non-empty version string."""
    assert isinstance(nb.__version__, str)
    assert nb.__version__[0].isdigit()
