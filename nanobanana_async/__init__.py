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
from . import defaults, events, gallery, limiters
from ._batch import Batch, run_batch
from ._client import Client
from ._config import PollPolicy, RetryEvent, RetryPolicy, Timeouts
from ._credits import CreditUsage
from ._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ClientClosedError,
    ClientStateError,
    DownloadError,
    InsufficientCreditsError,
    InvalidRequestError,
    LimiterUnavailableError,
    NanoBananaError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
    SubmitAbandonedError,
    SubmitHookError,
    SubmitUncertainError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
)
from ._inputs import MODEL_COSTS
from ._limiter import Limiter
from ._models import (
    AspectRatio,
    CustomModel,
    GeneratedImage,
    GenerationRequest,
    ImageInput,
    ImageSize,
    ModelName,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
)
from ._submitter import SubmitHooks
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
    "ClientClosedError",
    "ClientStateError",
    "CreditUsage",
    "CustomModel",
    "DownloadError",
    "GeneratedImage",
    "GenerationRequest",
    "ImageInput",
    "ImageSize",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "Limiter",
    "LimiterUnavailableError",
    "MODEL_COSTS",
    "ModelName",
    "NanoBananaError",
    "NotFoundError",
    "PermissionDeniedError",
    "PollPolicy",
    "ProtocolError",
    "RateLimitError",
    "RedisLimiter",
    "RetryEvent",
    "RetryPolicy",
    "run_batch",
    "ServerError",
    "SubmitAbandonedError",
    "SubmitHookError",
    "SubmitHooks",
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
    **dict.fromkeys(defaults.__all__, "nanobanana_async.defaults"),
    **dict.fromkeys(events.__all__, "nanobanana_async.events"),
    **dict.fromkeys(gallery.__all__, "nanobanana_async.gallery"),
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
