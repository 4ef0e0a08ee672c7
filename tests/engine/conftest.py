"""Engine acceptance tests: register the `slow` marker (deselect with `-m "not slow"`)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the `slow` marker used by the scale tests."""
    config.addinivalue_line("markers", "slow: a scale test taking a few seconds")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Bound every engine test to 60 s, so that a regression fails instead of hanging."""
    for item in items:
        if "tests/engine/" in item.nodeid and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(60))
