"""A batch's gallery: one static HTML page of its images, failures and costs.

```python
from nanobanana_async.gallery import write_gallery

page = write_gallery("out/")  # out/index.html, from out/journal.jsonl
```

`Batch` keeps its folder's gallery up to date by itself; `write_gallery` rebuilds it, `Gallery`
is the live writer a batch uses; its reload interval is
`nanobanana_async.defaults.DEFAULT_GALLERY_REFRESH`. (They were importable from the package root;
that still works, with a `DeprecationWarning`.)
"""

from __future__ import annotations

from ._gallery import GALLERY_NAME, Gallery, write_gallery

__all__ = ["GALLERY_NAME", "Gallery", "write_gallery"]
