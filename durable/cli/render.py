"""Text for the terminal: aligned tables, times, clipped cells, JSON on stdout, lines on stderr."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

#: Longest error message or JSON value shown in a table cell (``--json`` shows everything).
CELL_MAX = 60
VALUE_MAX = 200


def err(line: str) -> None:
    """One line on stderr (errors, and where the data lives)."""
    print(line, file=sys.stderr)


def print_json(value: object) -> None:
    print(json.dumps(value, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def when(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else None


def count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_text(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    text = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
    return clip(text, CELL_MAX)


def json_text(value: object, limit: int) -> str:
    return clip(json.dumps(value, default=_json_default), limit)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    indent: int = 0,
    header: bool = True,
) -> str:
    """Plain aligned columns; numbers right-aligned, None shown as ``-``."""
    body = [list(row) for row in rows]
    numeric = [
        bool(body) and all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in body)
        for i in range(len(headers))
    ]
    cells = [[str(h) for h in headers]] if header else []
    cells += [["-" if value is None else str(value) for value in row] for row in body]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = " " * indent
    return "\n".join(
        pad
        + "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    )
