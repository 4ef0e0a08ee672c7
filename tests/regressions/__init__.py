"""Regression tests: one per confirmed review finding, each failing on the code before its fix."""
