"""Logging for the command line: the library only calls ``structlog.get_logger("durable")``;
the CLI installs the production recipe here."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog


def configure_logging(*, json: bool | None = None, level: str = "info") -> None:
    """The production recipe, for the CLI: JSON lines when not on a terminal, else readable."""
    if json is None:
        json = not sys.stderr.isatty()
    # asyncpg's pool logs a traceback each time it fails to refill during an outage; the
    # worker's own db.unavailable / db.reconnected events say it once, in structured form
    logging.getLogger("asyncpg.pool").setLevel(logging.CRITICAL)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer)
        if json
        else structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
