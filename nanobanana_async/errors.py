"""The whole error tree: every exception the package raises, each a `NanoBananaError`.

```python
from nanobanana_async.errors import NotFoundError

try:
    snapshot = await client.get(task_id)
except NotFoundError:
    ...
```

The errors most code catches are in the package root too (``nb.TaskFailedError``); the rarer
ones live only here. (`ClientClosedError`, `ClientStateError`, `DownloadError`,
`LimiterUnavailableError`, `NotFoundError`, `PermissionDeniedError`, `SubmitAbandonedError` and
`SubmitHookError` were importable from the package root; that still works, with a
`DeprecationWarning`.)

```
NanoBananaError
├── InvalidRequestError (also ValueError)   bad input caught before any request; nothing sent
├── ClientStateError (also RuntimeError)    closed client, or used from another event loop
│   └── ClientClosedError
├── TransportError                          network failure, after retries
├── ProtocolError                           a body we cannot read; carries an excerpt
│   └── DownloadError                       a result URL answered something not an image
├── SubmitUncertainError                    a create may have reached the server
├── BudgetExceededError                     a submit would pass the credit budget; nothing sent
├── SubmitAbandonedError                    a create was given up before it was sent
├── LimiterUnavailableError                 a shared limiter's store cannot be reached
├── APIStatusError (.status, .body)
│   ├── BadRequestError 400   ├── AuthenticationError 401   ├── InsufficientCreditsError 402
│   ├── PermissionDeniedError 403   ├── NotFoundError 404
│   ├── RateLimitError 429 (.retry_after)   └── ServerError 5xx
└── TaskError (.task_id)
    ├── SubmitHookError (.task)              an on_created hook failed; the paid task is tracked
    ├── TaskFailedError (.snapshot, .failure_reason)
    └── TaskTimeoutError (also TimeoutError)
```
"""

from __future__ import annotations

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

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ClientClosedError",
    "ClientStateError",
    "DownloadError",
    "InsufficientCreditsError",
    "InvalidRequestError",
    "LimiterUnavailableError",
    "NanoBananaError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "SubmitAbandonedError",
    "SubmitHookError",
    "SubmitUncertainError",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "TransportError",
]
