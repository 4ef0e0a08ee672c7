"""A real redis-server per test session (and per destructive test) on a free loopback port."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis_support import REQUIRE_ENV, RedisServer


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server not found (install the redis-server system package)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{message}; {REQUIRE_ENV} is set, so these tests must not be skipped")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server shared by the tests that do not stop it (each uses its own name)."""
    executable = _redis_server()
    with tempfile.TemporaryDirectory(prefix="nb-redis-") as directory:
        server = RedisServer(executable, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may stop and restart."""
    executable = _redis_server()
    with tempfile.TemporaryDirectory(prefix="nb-redis-") as directory:
        server = RedisServer(executable, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
