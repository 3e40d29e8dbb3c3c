"""Hot and cold, kept by the workers: every ``history_interval`` seconds (jittered) a worker moves
the tasks that ended, with their runs and checkpoints, from the hot tables to history
(``Client.move_to_history``, batches that skip the rows another worker or a writer holds), and
after a move, at most every ``vacuum_interval`` seconds, vacuums the hot tables when its role
owns them (``VACUUM`` needs the owner; a ``durable_worker`` role leaves them to autovacuum, whose
per-table settings visit them every few thousand rows). Every round also analyzes the hot tables
when they hold far more rows than their statistics say (``Client.refresh_hot_stats``). The
history partitions of today and the next days are made at start and then every
:data:`PARTITIONS_INTERVAL_S` seconds.
docs/architecture.md ("Hot and cold") says why.
"""

from __future__ import annotations

import random

import anyio

from durable.client import Client
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger
from durable.runtime.deadlines import within

log = get_logger()

#: How often a worker makes sure the history partitions of the next days exist.
PARTITIONS_INTERVAL_S = 600.0
#: At most this many batches per round, so a backlog (an upgrade's history) drains in steps.
MAX_BATCHES = 20


class HistoryKeeper:
    """One worker's share of the hot-and-cold upkeep (see the module's docstring)."""

    def __init__(
        self,
        client: Client,
        db_timeout: float,
        *,
        interval_s: float,
        vacuum_interval_s: float,
        batch: int,
        min_age_s: float,
        days_ahead: int = 3,
    ) -> None:
        self.client = client
        self.db_timeout = db_timeout
        self.interval_s = interval_s
        self.vacuum_interval_s = vacuum_interval_s
        self.batch = batch
        self.min_age_s = min_age_s
        self.days_ahead = days_ahead
        self._may_vacuum: bool | None = None
        self._moved_since_vacuum = 0
        self._last_vacuum = 0.0
        self._last_partitions = float("-inf")

    async def run(self) -> None:
        """Keep history until cancelled; a failed round is logged and the next one tries again."""
        while True:
            try:
                await self.round()
            except DurableError as exc:
                log.warning("history.round_failed", error=str(exc))
            await anyio.sleep(self.interval_s * random.uniform(0.5, 1.0))  # workers spread out

    async def round(self) -> int:
        """One round: partitions when due, the moves, fresh statistics of the hot tables when
        they lag, a vacuum when due; how many tasks moved."""
        now = anyio.current_time()
        if now - self._last_partitions >= PARTITIONS_INTERVAL_S:
            await within(self.db_timeout, self.client.ensure_history_partitions(self.days_ahead))
            self._last_partitions = now
        moved = 0
        for _ in range(MAX_BATCHES):
            batch = await within(
                self.db_timeout,
                self.client.move_to_history(batch=self.batch, min_age=self.min_age_s),
            )
            moved += batch
            if batch < self.batch:
                break
        self._moved_since_vacuum += moved
        if moved:
            log.debug("history.moved", tasks=moved)
        if await within(self.db_timeout, self.client.refresh_hot_stats()):
            log.debug("history.analyzed")
        if self._moved_since_vacuum and now - self._last_vacuum >= self.vacuum_interval_s:
            await self._vacuum()
            self._last_vacuum = anyio.current_time()
        return moved

    async def _vacuum(self) -> None:
        if self._may_vacuum is None:
            self._may_vacuum = await self.client.may_vacuum_hot_tables()
            if not self._may_vacuum:
                log.info("history.vacuum_left_to_autovacuum", reason="the role does not own them")
        if self._may_vacuum:
            await self.client.vacuum_hot_tables()
        self._moved_since_vacuum = 0
