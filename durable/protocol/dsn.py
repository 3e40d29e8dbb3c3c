"""Where the database is: ``Durable(dsn)`` > ``$DURABLE_DSN`` > the embedded server."""

from __future__ import annotations

import os


def resolve_dsn(dsn: str | None) -> str | None:
    """The DSN to use, or None for the embedded server under ``$DURABLE_HOME``."""
    if dsn:
        return dsn
    return os.environ.get("DURABLE_DSN") or None
