"""An asyncio-first client for the Nano Banana image API.

```python
import nanobanana_async as nb

async with nb.Client() as client:
    result = await client.generate("a banana cat", model="nano-banana")
    await result.images[0].save("cat.png")
```
"""

from __future__ import annotations

from ._batch import Batch, run_batch
from ._client import Client
from ._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_POLL_JITTER,
    DEFAULT_POLL_MAX_INTERVAL,
    DEFAULT_POLL_MIN_INTERVAL,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_DEADLINE,
    DEFAULT_RETRY_INITIAL_BACKOFF,
    DEFAULT_RETRY_MAX_BACKOFF,
    DEFAULT_TASK_TIMEOUT,
    PollPolicy,
    RequestKind,
    RetryEvent,
    RetryPolicy,
    Timeouts,
)
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
from ._events import BatchEvent, BatchEventKind, BatchItem, BatchItemStatus, BatchSummary
from ._gallery import DEFAULT_GALLERY_REFRESH, GALLERY_NAME, Gallery, write_gallery
from ._inputs import MODEL_COSTS
from ._limiter import BaseLimiter, Lease, Limiter
from ._models import (
    AspectRatio,
    GeneratedImage,
    GenerationRequest,
    ImageInput,
    ImageSize,
    ModelName,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
)
from ._redis import RedisLimiter
from ._submitter import SubmitHooks
from ._task import Task
from ._version import __version__

__all__ = [
    "APIStatusError",
    "AspectRatio",
    "AuthenticationError",
    "BadRequestError",
    "BaseLimiter",
    "Batch",
    "BatchEvent",
    "BatchEventKind",
    "BatchItem",
    "BatchItemStatus",
    "BatchSummary",
    "BudgetExceededError",
    "Client",
    "ClientClosedError",
    "ClientStateError",
    "CreditUsage",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_GALLERY_REFRESH",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_MAX_REPLY_BYTES",
    "DEFAULT_POLL_JITTER",
    "DEFAULT_POLL_MAX_INTERVAL",
    "DEFAULT_POLL_MIN_INTERVAL",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RETRY_ATTEMPTS",
    "DEFAULT_RETRY_DEADLINE",
    "DEFAULT_RETRY_INITIAL_BACKOFF",
    "DEFAULT_RETRY_MAX_BACKOFF",
    "DEFAULT_TASK_TIMEOUT",
    "DownloadError",
    "Gallery",
    "GALLERY_NAME",
    "GeneratedImage",
    "GenerationRequest",
    "ImageInput",
    "ImageSize",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "Lease",
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
    "RequestKind",
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
    "write_gallery",
    "__version__",
]
