"""Fixtures of the client tests: a fast emulator and a client bound to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import nanobanana_async as nb
from nanobanana_async.testing import Emulator

from ._helpers import emulator, make_client


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """A started emulator at speed 1000 with images downscaled by 8."""
    async with emulator() as started:
        yield started


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[nb.Client]:
    """A client of `emu` with fast polling and sleepless retries, closed after the test."""
    async with make_client(emu) as opened:
        yield opened
