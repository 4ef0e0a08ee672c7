"""The ``nanobanana`` command: generate, batch, status, wait, emulator and demo.

Rooms: `_parser` (options, subcommands, `main`), `_commands` (what each subcommand does),
`_checks` (local checks before anything is sent), `_input` (reading a batch's input file) and
`_views` (plain lines, JSON lines or a live display).

Exit codes: 0 all done; 1 something failed (a task, or batch items that did not end with images;
a dry run with invalid lines or over its budget);
2 usage error (bad option, unreadable input file, unwritable destination, no API key); 130
interrupted (Ctrl-C).

Output: a live display (with the ``cli`` extra, ``rich``) on a terminal; plain lines otherwise;
``--json`` prints one JSON object per line: each event as it happens (``{"event": "submitted",
...}``), then one final object (``"summary"`` for batch and demo, ``"plan"`` for a batch dry run,
``"result"`` for generate and wait, ``"status"`` for status). Standard error also gets the
library's INFO log lines (retries, pauses, requests still waiting for an answer). Every line goes
through `_views.safe`: control and bidi characters from servers and files never reach a terminal.
"""

from __future__ import annotations

from ._parser import build_parser, main

__all__ = ["build_parser", "main"]
