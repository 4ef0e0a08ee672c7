"""Pytest fixtures for the emulator, registered through the ``pytest11`` entry point.

Tests using them must run under anyio's pytest plugin (``pytest.mark.anyio``)
on the asyncio backend, as aiohttp is asyncio-only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["nanobanana_emulator", "nanobanana_emulator_options"]

#: Time scale of the fixture's emulator: a 15 s generation takes 15 ms.
DEFAULT_SPEED = 1000.0


@pytest.fixture
def nanobanana_emulator_options() -> dict[str, Any]:
    """Keyword arguments for the ``nanobanana_emulator`` fixture's ``Emulator``.

    Override this fixture (in a conftest or a test module) to customise it; the
    options are merged over ``{"speed": 1000.0}``.
    """
    return {}


@pytest.fixture
async def nanobanana_emulator(
    nanobanana_emulator_options: dict[str, Any],
) -> AsyncIterator[Emulator]:
    """Yield a started ``Emulator`` running at ``speed=1000.0`` unless the options say otherwise."""
    # Imported here so merely having the plugin installed costs pytest nothing.
    from ._emulator import Emulator

    async with Emulator(**{"speed": DEFAULT_SPEED, **nanobanana_emulator_options}) as emulator:
        yield emulator
