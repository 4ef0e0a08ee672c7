"""Emulator controls for load-proof tests: hold tasks running, keep creates at the door.

The controls are the emulator's own (`Emulator.hold()`, `Emulator.gate()`); this module keeps the
names the test folders import. Importable from any test folder: pytest puts ``tests/`` on
``sys.path`` for the packages in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from nanobanana_async.testing import Emulator, Gate, Hold

__all__ = ["Gate", "Hold", "held_emulator"]


@asynccontextmanager
async def held_emulator(**options: Any) -> AsyncIterator[tuple[Emulator, Hold]]:
    """Start an emulator (speed 1000 unless given) whose tasks are held running until released."""
    options.setdefault("speed", 1000)
    async with Emulator(**options) as emu:
        with emu.hold() as hold:
            yield emu, hold
