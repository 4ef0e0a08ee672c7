"""Engine acceptance tests: a timeout of their own (the `slow` marker is in pyproject.toml)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every engine test to 60 s, so that a regression fails instead of hanging."""
    for item in items:
        if "tests/engine/" in item.nodeid and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(60))
