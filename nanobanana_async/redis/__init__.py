"""A limiter shared through Redis by every process and host that uses one API key.

Rooms: `_scripts` (the Lua scripts, every change of the shared state), `_store` (the connection
and the keys), `_keeper` (what this process holds, renewed and re-asserted), `_listener` (the
pub/sub subscription), `_slots` (local waiters, the dispatcher, give-backs and the wait line),
`_pace` (the shared pause and rate bucket), `_budget` (the credits) and `_limiter`
(`RedisLimiter`, facing the client).
"""

from __future__ import annotations

from ._limiter import RedisLimiter
from ._store import redact_url

__all__ = ["RedisLimiter", "redact_url"]
