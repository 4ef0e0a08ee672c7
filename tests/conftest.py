"""Shared fixtures and the suite's scheduling: asyncio for every async test, parallel workers."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

#: Workers per core: the tests mostly wait (on emulators, child processes, Redis, a browser).
WORKERS_PER_CORE = 2
#: At most this many workers, whatever the machine: each costs a second or two to start.
MAX_WORKERS = 8


# Load, not the code, decides how long one example takes on a busy machine: no deadline, and no
# health check of the time spent making examples. Everything else as hypothesis's default.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("suite")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """Size ``-n auto``: two workers per core (at most 8); none for a few named tests."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    args = [arg for arg in config.args if not arg.startswith("-")]
    if args and all("::" in arg for arg in args):
        return 0  # named tests: starting workers would cost more than it saves
    return min(WORKERS_PER_CORE * _cores(), MAX_WORKERS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the slow tests first, one per worker in turn, so that they do not make the run's tail.

    xdist's worksteal hands each worker a contiguous share of this list at the start (then
    moves tests from the busiest); the slow tests go at the head of the shares, round robin.
    """
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    shares: list[list[pytest.Item]] = [slow[i::workers] for i in range(workers)]
    remaining = len(items)
    for i, share in enumerate(shares):  # sized as worksteal sizes them
        size = remaining // (workers - i)
        remaining -= size
        take = max(size - len(share), 0)
        share += rest[:take]
        del rest[:take]
    items[:] = [item for share in shares for item in share] + rest


@pytest.fixture
def anyio_backend() -> str:
    """Pin anyio's pytest plugin to the asyncio backend."""
    return "asyncio"
