"""Tests of the Nano Banana emulator (``nanobanana_async.testing``), over real HTTP."""
