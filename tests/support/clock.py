"""A clock a test moves by hand, for the cron scheduler (``cron_clock=`` of a worker): the
scheduler sleeps until the test moves it past the moment it waits for."""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio


class FakeClock:
    """``now()`` is what the test set; ``sleep_until`` returns once the clock reached it."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._moved = anyio.Event()

    def now(self) -> datetime:
        return self._now

    def sync(self, database_now: datetime) -> None:
        """The database's time does not move this clock."""

    async def sleep_until(self, when: datetime) -> None:
        while self._now < when:
            await self._moved.wait()

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by ``delta`` and wake every sleeper; the new time."""
        self._now += delta
        moved, self._moved = self._moved, anyio.Event()
        moved.set()
        return self._now
