"""The hostile suite runs with asyncio's debug mode on, and fails on any error asyncio logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """Run on asyncio in debug mode (never-awaited coroutines, unclosed transports, ...)."""
    return "asyncio", {"debug": True}


@pytest.fixture(autouse=True)
def _asyncio_stays_quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test when asyncio or aiohttp logged an error (a leaked task, session, socket)."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    errors = [
        record
        for record in caplog.records
        if record.name in ("asyncio", "aiohttp.client") and record.levelno >= logging.ERROR
    ]
    assert not errors, [record.getMessage() for record in errors]
