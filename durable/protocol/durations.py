"""Durations: every duration durable takes is seconds (an int or a float) or a ``timedelta``; this
is the one place that turns one into float seconds and refuses what is not a duration."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import overload

from durable.protocol.errors import InvalidArgument


@overload
def seconds(value: float | timedelta, *, what: str) -> float: ...


@overload
def seconds(value: float | timedelta | None, *, what: str) -> float | None: ...


def seconds(value: float | timedelta | None, *, what: str) -> float | None:
    """``value`` in float seconds (None stays None); :class:`InvalidArgument` (a ValueError)
    naming ``what`` when it is negative, infinite, NaN or not a number at all."""
    if value is None:
        return None
    try:
        result = value.total_seconds() if isinstance(value, timedelta) else float(value)
    except (TypeError, ValueError):
        result = math.nan
    if not (0 <= result < math.inf):  # also refuses NaN
        raise InvalidArgument(
            f"{what} must be a non-negative duration of finite seconds, got {value!r}"
        )
    return result
