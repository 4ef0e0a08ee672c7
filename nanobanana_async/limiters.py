"""Limiters: what bounds the generations in flight, pauses and budget of one API key.

```python
from nanobanana_async.limiters import BaseLimiter, Lease, RequestKind
```

`BaseLimiter`, `Lease` and `RequestKind` are for writing a limiter of your own; the limiters
themselves, `Limiter` (in-process, the default) and `RedisLimiter` (shared by processes and
hosts), are in the package root. (These three were importable from the package root too; that
still works, with a `DeprecationWarning`.)
"""

from __future__ import annotations

from ._config import RequestKind
from ._limiter import BaseLimiter, Lease

__all__ = ["BaseLimiter", "Lease", "RequestKind"]
