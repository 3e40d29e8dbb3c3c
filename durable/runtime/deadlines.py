"""Deadlines and reconnect backoff: how long one call to the database may take, and how long to
wait between attempts while the database is unreachable.

Every worker call to the database has a deadline (a stalled connection must not hang the
worker), and retries while the database is unreachable wait exponentially longer, capped, with
jitter, so many workers do not retry in step.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable
from typing import TypeVar

import anyio

from durable.protocol.errors import DatabaseUnavailable

T = TypeVar("T")

#: The first reconnect delay, doubled per failed attempt up to RECONNECT_MAX_S (with jitter).
RECONNECT_BASE_S = 0.05
RECONNECT_MAX_S = 5.0
#: How long closing a connection to an unreachable database may take before it is dropped.
CLOSE_TIMEOUT_S = 2.0
#: The least deadline of a worker's call to the database (tests use leases of a second or less).
MIN_DB_TIMEOUT_S = 0.5


def db_timeout(claim_timeout: float) -> float:
    """The deadline of one worker call to the database: half a lease, so a worker cut off from
    the database notices while its leases still hold (but never under MIN_DB_TIMEOUT_S)."""
    return max(claim_timeout / 2, MIN_DB_TIMEOUT_S)


async def within(timeout_s: float, op: Awaitable[T]) -> T:
    """``await op``, or raise :class:`DatabaseUnavailable` if it takes longer than ``timeout_s``
    (a stalled connection; asyncpg cancels the statement and drops the connection)."""
    try:
        with anyio.fail_after(timeout_s):
            return await op
    except TimeoutError as exc:
        raise DatabaseUnavailable(f"no answer from the database within {timeout_s:g}s") from exc


class ReconnectBackoff:
    """Delays between attempts while the database is unreachable: ``base * 2**n``, at most
    ``cap``, each drawn from its upper half (jitter, so many workers do not retry in step)."""

    def __init__(self, base: float = RECONNECT_BASE_S, cap: float = RECONNECT_MAX_S) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0  # failed attempts since the last success

    def next_delay(self) -> float:
        self.attempt += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt - 1, 32))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> int:
        """A success: start over; returns how many attempts had failed."""
        failed, self.attempt = self.attempt, 0
        return failed
