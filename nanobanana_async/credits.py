"""Credits: what each documented model costs, and what a client counted.

```python
from nanobanana_async.credits import MODEL_COSTS, CreditUsage

MODEL_COSTS["nano-banana"]  # 15
usage: CreditUsage = client.credits
print(usage.charged, usage.refunded, usage.reserved)
```

(`MODEL_COSTS` and `CreditUsage` were importable from the package root; that still works, with a
`DeprecationWarning`.)
"""

from __future__ import annotations

from ._credits import CreditUsage
from ._inputs import MODEL_COSTS

__all__ = ["CreditUsage", "MODEL_COSTS"]
