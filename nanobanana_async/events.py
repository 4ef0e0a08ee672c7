"""What the client and a batch report as they run, and the hooks that receive it.

```python
from nanobanana_async.events import BatchEvent, BatchEventKind, RetryEvent

def show(event: BatchEvent) -> None:
    if event.kind is BatchEventKind.SUCCEEDED:
        print(event.paths)

def log_retry(event: RetryEvent) -> None:
    print(f"{event.endpoint}: attempt {event.attempt}, waiting {event.wait:.1f} s")
```

`Batch.run(on_event=...)` and `Batch.events()` give `BatchEvent`s; `Batch.run` returns a
`BatchSummary` of `BatchItem`s. `RetryPolicy(on_retry=...)` hooks receive a `RetryEvent` before
each retry sleep; `SubmitHooks` are callbacks around one create (``client.submit(hooks=...)``).
(They were importable from the package root; that still works, with a `DeprecationWarning`.)
"""

from __future__ import annotations

from ._config import RetryEvent
from ._events import BatchEvent, BatchEventKind, BatchItem, BatchItemStatus, BatchSummary
from ._submitter import SubmitHooks

__all__ = [
    "BatchEvent",
    "BatchEventKind",
    "BatchItem",
    "BatchItemStatus",
    "BatchSummary",
    "RetryEvent",
    "SubmitHooks",
]
