"""Tests of the client core against the real emulator over HTTP."""
