"""durable's logger: structlog's events, delivered through the standard library's ``logging``.

Every module logs through :func:`get_logger`, and nothing here configures output. Events go to
the stdlib logger ``durable``, so an application's handlers and levels apply; with no
configuration nothing reaches stdout (the stdlib's last-resort handler prints warnings and
errors to stderr). The processors are structlog's global ones: an application that configures
structlog shapes durable's events too, and ``structlog.testing.capture_logs()`` captures them.
The CLI installs the production recipe (``durable.cli.logs``).

An event below the ``durable`` logger's level costs one ``isEnabledFor`` check and nothing else:
no processor runs for it, which matters on the worker's hot path (two events per run).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_STDLIB = logging.getLogger("durable")


class Logger:
    """A structlog-style logger (``info(event, **fields)``, ``bind(**fields)``) that asks the
    stdlib logger's level before anything else."""

    __slots__ = ("_context",)

    def __init__(self, context: dict[str, Any] | None = None) -> None:
        self._context = context or {}

    def bind(self, **fields: Any) -> Logger:
        return Logger({**self._context, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error event with the exception being handled."""
        self._log(logging.ERROR, "exception", event, fields)

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if not _STDLIB.isEnabledFor(level):
            return
        logger = structlog.wrap_logger(_STDLIB, wrapper_class=structlog.stdlib.BoundLogger)
        if self._context:
            fields = {**self._context, **fields}
        getattr(logger, method)(event, **fields)


_ROOT = Logger()


def get_logger() -> Logger:
    """The logger every durable module uses."""
    return _ROOT
