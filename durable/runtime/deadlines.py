"""Deadlines and reconnect backoff: how long one call to the database may take, and how long to
wait between attempts while the database is unreachable.

Every worker call to the database has a deadline (a stalled connection must not hang the
worker), and retries while the database is unreachable wait exponentially longer, capped, with
jitter, so many workers do not retry in step.

A run's writes (its completion, failure, release, checkpoints, progress, heartbeats) ride out a
dropped connection or a restart of PostgreSQL: :func:`ride_out` tries one again with backoff for
as long as the run's lease surely holds, so an outage shorter than the lease costs no attempt and
re-runs no code. Each write is safe to repeat: one that committed before its answer was lost is
refused by the lease fence (the run is no longer running) or changes nothing (a checkpoint is
written once, progress and lease extensions are overwritten).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from durable.protocol.errors import DatabaseUnavailable
from durable.protocol.log import get_logger

log = get_logger()

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


async def ride_out(
    op: Callable[[], Awaitable[T]],
    *,
    timeout_s: float,
    lease_left: Callable[[], float],
    what: str,
    ids: dict[str, Any],
) -> T:
    """``await op()`` within ``timeout_s``; when the database is unreachable, again after a
    backoff delay for as long as ``lease_left()`` (seconds the run's lease surely holds) is
    positive. Raises the last :class:`DatabaseUnavailable` once the lease may have lapsed."""
    backoff = ReconnectBackoff()
    while True:
        try:
            result = await within(timeout_s, op())
        except DatabaseUnavailable as exc:
            left = lease_left()
            if left <= 0:
                raise
            delay = min(backoff.next_delay(), left)
            log.warning(
                "run.write_retried",
                write=what,
                tries=backoff.attempt,
                delay_s=round(delay, 3),
                lease_left_s=round(left, 3),
                error=str(exc),
                **ids,
            )
            await anyio.sleep(delay)
        else:
            if backoff.attempt:
                log.info("run.write_recovered", write=what, tries=backoff.attempt, **ids)
            return result
