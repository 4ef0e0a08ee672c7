"""An in-process emulator of the Nano Banana image API, for tests and offline demos.

It implements the API contract independently of the client. Start one with::

    async with Emulator(speed=1000.0) as emu:
        ...  # talk to emu.base_url with emu.api_key

Under pytest, the ``nanobanana_emulator`` fixture yields a started one. ``emu.hold()`` and
``emu.gate()`` let a test decide when tasks end and when requests get in (see `Hold`, `Gate`).
"""

from __future__ import annotations

from ._controls import Gate, Hold
from ._emulator import Emulator
from ._faults import Fault, FaultHandle, FaultInjector
from ._png import png_size
from ._state import EmulatedTask, Ledger, RequestRecord

__all__ = [
    "EmulatedTask",
    "Emulator",
    "Fault",
    "FaultHandle",
    "FaultInjector",
    "Gate",
    "Hold",
    "Ledger",
    "png_size",
    "RequestRecord",
]
