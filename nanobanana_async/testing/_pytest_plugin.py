"""Pytest fixtures for the emulator, registered through the ``pytest11`` entry point.

The async fixtures run under anyio's pytest plugin (``pytest.mark.anyio``, on the asyncio backend:
aiohttp is asyncio-only) and under pytest-asyncio, in its strict mode too
(``pytest.mark.asyncio``): when pytest-asyncio is installed they are declared its way, which
anyio's plugin runs as well.

The plugin also gives anyio's plugin a default ``anyio_backend`` of ``"asyncio"``: without it,
anyio runs every ``pytest.mark.anyio`` test on trio too when trio is installed, where aiohttp
cannot run. A ``conftest.py`` that defines ``anyio_backend`` still decides.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from .. import Client
    from ._emulator import Emulator

__all__ = [
    "nanobanana_client",
    "nanobanana_client_options",
    "nanobanana_emulator",
    "nanobanana_emulator_options",
]

#: Time scale of the fixture's emulator: a 15 s generation takes 15 ms.
DEFAULT_SPEED = 1000.0


_F = TypeVar("_F", bound=Callable[..., Any])


def _async_fixture() -> Callable[[_F], _F]:
    """Return pytest-asyncio's fixture decorator when it is installed, else pytest's."""
    try:
        module = importlib.import_module("pytest_asyncio")
    except ImportError:
        return cast("Callable[[_F], _F]", pytest.fixture)
    return cast("Callable[[_F], _F]", module.fixture)


_fixture = _async_fixture()

#: The name the default ``anyio_backend`` is registered under.
_BACKEND_PLUGIN = "nanobanana-anyio-backend"


def pytest_configure(config: pytest.Config) -> None:
    """Register the default ``anyio_backend`` (asyncio) after every installed plugin."""
    if not config.pluginmanager.has_plugin(_BACKEND_PLUGIN):
        module = importlib.import_module("nanobanana_async.testing._anyio_backend")
        config.pluginmanager.register(module, _BACKEND_PLUGIN)


def _speed(options: dict[str, Any]) -> float:
    return float(options.get("speed", DEFAULT_SPEED))


@pytest.fixture
def nanobanana_emulator_options() -> dict[str, Any]:
    """Keyword arguments for the ``nanobanana_emulator`` fixture's ``Emulator``.

    Override this fixture (in a conftest or a test module) to customise it; the
    options are merged over ``{"speed": 1000.0}``.
    """
    return {}


@pytest.fixture
def nanobanana_client_options() -> dict[str, Any]:
    """Keyword arguments for the ``nanobanana_client`` fixture's ``Client``.

    Override this fixture to customise it; the options are merged over the emulator's
    ``base_url`` and ``poll=PollPolicy(speed=<the emulator's speed>)``.
    """
    return {}


@_fixture
async def nanobanana_emulator(
    nanobanana_emulator_options: dict[str, Any],
) -> AsyncIterator[Emulator]:
    """Yield a started ``Emulator`` running at ``speed=1000.0`` unless the options say otherwise."""
    # Imported here so merely having the plugin installed costs pytest nothing.
    from ._emulator import Emulator

    options = {"speed": DEFAULT_SPEED, **nanobanana_emulator_options}
    async with Emulator(**options) as emulator:
        yield emulator


@_fixture
async def nanobanana_client(
    nanobanana_emulator: Emulator,
    nanobanana_emulator_options: dict[str, Any],
    nanobanana_client_options: dict[str, Any],
) -> AsyncIterator[Client]:
    """Yield an open ``Client`` of the ``nanobanana_emulator``, polling at the emulator's speed."""
    # The emulator itself imports nothing of the client; only this fixture does.
    from .. import Client, PollPolicy

    options = {
        "base_url": nanobanana_emulator.base_url,
        "poll": PollPolicy(speed=_speed(nanobanana_emulator_options)),
        **nanobanana_client_options,
    }
    async with Client(nanobanana_emulator.api_key, **options) as client:
        yield client
