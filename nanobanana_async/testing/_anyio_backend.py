"""The pytest plugin's default ``anyio_backend``: asyncio (registered by `_pytest_plugin`).

A module of its own, registered when pytest is configured, so that it comes after anyio's own
plugin (whose fixture runs every test on every installed backend, trio included) and before any
``conftest.py``, whose ``anyio_backend`` still wins.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Run ``pytest.mark.anyio`` tests on asyncio only: aiohttp, and so the client, needs it.

    Override it in a ``conftest.py`` (or a test module) to choose otherwise.
    """
    return "asyncio"
