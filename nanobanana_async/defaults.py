"""The default values of the client's options, one constant each.

```python
from nanobanana_async.defaults import DEFAULT_REQUEST_TIMEOUT
```

`Timeouts`, `RetryPolicy`, `PollPolicy`, `Client` and `Gallery` use them when an option is not
given. (They were importable from the package root; that still works, with a
`DeprecationWarning`.)
"""

from __future__ import annotations

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
)
from ._gallery import DEFAULT_GALLERY_REFRESH

__all__ = [
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
]
