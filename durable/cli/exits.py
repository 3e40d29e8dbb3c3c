"""How a command ends: its exit code, and the error that means "bad usage"."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with what the user typed: one line on stderr, exit code 2."""
