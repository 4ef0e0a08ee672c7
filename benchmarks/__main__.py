"""``python -m benchmarks [--quick]``: run every section and save the results."""

from __future__ import annotations

from .run import main

raise SystemExit(main())
