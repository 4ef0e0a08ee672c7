"""What a request accepts as a reference image, for annotating your own code.

```python
from pathlib import Path

from nanobanana_async.inputs import ImageInput

def references(paths: list[str]) -> list[ImageInput]:
    return [Path(p) for p in paths]
```

A reference image is a path, an ``http(s)`` URL or ``data:`` URL string, raw bytes, or a binary
file object. (`ImageInput` was importable from the package root; that still works, with a
`DeprecationWarning`.)
"""

from __future__ import annotations

from ._inputs import ImageInput

__all__ = ["ImageInput"]
