"""An asyncio-first client for the Nano Banana image API.

```python
import nanobanana_async as nb

async with nb.Client() as client:
    result = await client.generate("a banana cat", model="nano-banana")
    await result.images[0].save("cat.png")
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING

# The public submodules: names that moved off the root live there (see `_MOVED`).
from . import credits, defaults, errors, events, gallery, inputs, limiters
from ._batch import Batch, run_batch
from ._client import Client
from ._config import PollPolicy, RetryPolicy, Timeouts
from ._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    InsufficientCreditsError,
    InvalidRequestError,
    NanoBananaError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SubmitUncertainError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
)
from ._limiter import Limiter
from ._models import (
    AspectRatio,
    CustomModel,
    GeneratedImage,
    GenerationRequest,
    ImageSize,
    ModelName,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
)
from ._task import Task
from ._version import __version__
from .redis import RedisLimiter

__all__ = [
    "APIStatusError",
    "AspectRatio",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BudgetExceededError",
    "Client",
    "CustomModel",
    "GeneratedImage",
    "GenerationRequest",
    "ImageSize",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "Limiter",
    "ModelName",
    "NanoBananaError",
    "PollPolicy",
    "ProtocolError",
    "RateLimitError",
    "RedisLimiter",
    "RetryPolicy",
    "run_batch",
    "ServerError",
    "SubmitUncertainError",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskResult",
    "TaskSnapshot",
    "TaskStatus",
    "TaskTimeoutError",
    "Timeouts",
    "TransportError",
    "__version__",
]

#: Names that moved from the package root to a public submodule (0.2), by old name: they are
#: still importable from the root, with a `DeprecationWarning` saying where they went.
_MOVED: dict[str, str] = {
    **dict.fromkeys(credits.__all__, "nanobanana_async.credits"),
    **dict.fromkeys(defaults.__all__, "nanobanana_async.defaults"),
    **{
        name: "nanobanana_async.errors"
        for name in errors.__all__
        if name not in __all__  # the root's errors stay there
    },
    **dict.fromkeys(events.__all__, "nanobanana_async.events"),
    **dict.fromkeys(gallery.__all__, "nanobanana_async.gallery"),
    **dict.fromkeys(inputs.__all__, "nanobanana_async.inputs"),
    **dict.fromkeys(limiters.__all__, "nanobanana_async.limiters"),
}

if not _TYPE_CHECKING:  # type checkers see only the new homes: a moved name is an error there

    def __getattr__(name: str) -> object:
        """Return a name that moved to a submodule, with a `DeprecationWarning`."""
        import importlib
        import warnings

        home = _MOVED.get(name)
        if home is None:
            raise AttributeError(f"module 'nanobanana_async' has no attribute {name!r}")
        warnings.warn(
            f"nanobanana_async.{name} moved to {home}.{name}; import it from there "
            "(the old name will be removed in a future release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)
