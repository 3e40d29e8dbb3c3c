"""Retry strategies. They are stored with the task so that SQL computes the next attempt's time.

The delay before attempt ``n + 1`` after attempt ``n`` failed:

* ``Fixed(seconds)``: ``seconds``.
* ``Exponential(base, factor, max, jitter)``: ``d = min(max, base * factor ** (n - 1))``, then
  spread uniformly over ``[d * (1 - jitter), d * (1 + jitter)]`` and capped at ``max`` again.

:func:`delay_bounds` gives the interval a delay falls in; the SQL function
``durable.next_delay`` implements the same formula.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from durable.protocol import durations

#: A custom backoff: ``(attempt, error) -> seconds``; evaluated by the worker, not by SQL.
Backoff = Callable[[int, BaseException], float | timedelta | Awaitable[float | timedelta]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fixed:
    """Wait the same number of seconds before every retry."""

    seconds: float

    def __init__(self, seconds: float | timedelta) -> None:
        object.__setattr__(self, "seconds", durations.seconds(seconds, what="Fixed(seconds)"))

    def to_json(self) -> dict[str, Any]:
        """The ``retry`` document stored with the task: ``{"kind": "fixed", "seconds"}``."""
        return {"kind": "fixed", "seconds": self.seconds}


@dataclass(frozen=True, slots=True, kw_only=True)
class Exponential:
    """``base * factor ** (attempt - 1)`` seconds, capped at ``max``, spread by ``jitter``."""

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.max < 0:
            raise ValueError("Exponential needs base >= 0, factor >= 1 and max >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Exponential jitter must be between 0 and 1")

    def to_json(self) -> dict[str, Any]:
        """The ``retry`` document stored with the task (SQL computes each delay from it)."""
        return {
            "kind": "exponential",
            "base": self.base,
            "factor": self.factor,
            "max": self.max,
            "jitter": self.jitter,
        }


RetryStrategy = Fixed | Exponential

DEFAULT_RETRY = Exponential()


def retry_from_json(doc: dict[str, Any] | None) -> RetryStrategy:
    if not doc:
        return DEFAULT_RETRY
    if doc.get("kind") == "fixed":
        return Fixed(float(doc["seconds"]))
    return Exponential(
        base=float(doc.get("base", 1.0)),
        factor=float(doc.get("factor", 2.0)),
        max=float(doc.get("max", 300.0)),
        jitter=float(doc.get("jitter", 0.0)),
    )


def delay_bounds(strategy: RetryStrategy, attempt: int) -> tuple[float, float]:
    """The interval in which the delay after failed attempt ``attempt`` falls."""
    if isinstance(strategy, Fixed):
        return strategy.seconds, strategy.seconds
    d = _capped_exponential(strategy, max(attempt, 1) - 1)
    return d * (1 - strategy.jitter), min(strategy.max, d * (1 + strategy.jitter))


def _capped_exponential(strategy: Exponential, n: int) -> float:
    """``min(max, base * factor ** n)`` without overflow (as ``durable.next_delay`` does)."""
    base, factor, cap = strategy.base, strategy.factor, strategy.max
    if factor <= 1 or base <= 0:
        return min(base, cap)
    if cap <= base or n * math.log(factor) >= math.log(cap / base):
        return cap
    return float(base * factor**n)
