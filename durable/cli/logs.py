"""Logging for the command line. The library only logs (``durable.protocol.log``: structlog's
events through the stdlib logger ``durable``); the CLI installs the production recipe here, on
the standard library's ``logging``, before it imports a user's app — so an app that sets up
logging itself (structlog or stdlib) keeps its own setup.

``--log-format json`` writes one JSON object per line to stderr (the default when stderr is not a
terminal), ``console`` readable lines; ``--log-level`` is the ``durable`` logger's level and the
root handler's (the root logger stays at WARNING, so other libraries' info does not flood in).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import orjson
import structlog

LOG_LEVELS = ("debug", "info", "warning", "error")
LogFormat = Literal["json", "console"]


def configure_logging(
    *, json: bool | None = None, level: str = "info", log_format: LogFormat | None = None
) -> None:
    """The production recipe: structlog's processors render into a stdlib handler on stderr,
    JSON lines when not on a terminal (or ``log_format="json"``), else readable lines."""
    if log_format is not None:
        json = log_format == "json"
    if json is None:
        json = not sys.stderr.isatty()
    # asyncpg's pool logs a traceback each time it fails to refill during an outage; the
    # worker's own db.unavailable / db.reconnected events say it once, in structured form
    logging.getLogger("asyncpg.pool").setLevel(logging.CRITICAL)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=lambda v, **_: orjson.dumps(v).decode())
        if json
        else structlog.dev.ConsoleRenderer()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,  # records of other libraries' stdlib loggers
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    handler.setLevel(logging.NOTSET)
    logging.getLogger("durable").setLevel(numeric)
