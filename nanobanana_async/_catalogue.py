"""The one list of models, prices and request values: for the client, the CLI and the emulator.

Pure data: this module imports nothing of the package, so the emulator (which must not import the
client) and the client read the same list, and a model the CLI accepts is one the emulator knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: Credits per create of the models the provider documents (docs/api.md).
DOCUMENTED_PRICES: Mapping[str, int] = MappingProxyType(
    {"nano-banana-fast": 5, "nano-banana": 15, "nano-banana-pro": 20}
)
#: Model names third parties report, whose price is not published: the service may accept them,
#: and a caller who sends one gives its price when a budget is set.
REPORTED_MODELS: tuple[str, ...] = ("nano-banana-2", "nano-banana-pro-vip")
#: Output sizes, as the API spells them.
IMAGE_SIZES: tuple[str, ...] = ("1K", "2K", "4K")
#: Aspect ratios every model accepts (besides `auto`).
ASPECT_RATIOS: tuple[str, ...] = (
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
)
#: Ratios that only models newer than the documented ones accept.
EXTRA_ASPECT_RATIOS: tuple[str, ...] = ("1:4", "4:1", "1:8", "8:1")
