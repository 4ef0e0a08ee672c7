"""What a batch reports as it runs and how it ended: its events, items and summary.

```python
from nanobanana_async.events import BatchEvent, BatchEventKind

def show(event: BatchEvent) -> None:
    if event.kind is BatchEventKind.SUCCEEDED:
        print(event.paths)
```

`Batch.run(on_event=...)` and `Batch.events()` give `BatchEvent`s; `Batch.run` returns a
`BatchSummary` of `BatchItem`s. (They were importable from the package root; that still works,
with a `DeprecationWarning`.)
"""

from __future__ import annotations

from ._events import BatchEvent, BatchEventKind, BatchItem, BatchItemStatus, BatchSummary

__all__ = ["BatchEvent", "BatchEventKind", "BatchItem", "BatchItemStatus", "BatchSummary"]
