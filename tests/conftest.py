"""Shared fixtures: every async test runs on asyncio (aiohttp is asyncio-only)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Pin anyio's pytest plugin to the asyncio backend."""
    return "asyncio"
