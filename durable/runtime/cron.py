"""The cron scheduler: every worker fires the due slots of the schedules of its queues.

A schedule is declared in code (``app.cron``: a :class:`CronJob`) or added at run time
(``app.add_cron``, ``durable cron add``); both are rows of ``durable.cron_schedules``. A worker
writes its code's schedules there when it starts, then loops: read the schedules of its queues
(those added at run time, and those of the code it runs; a row that code no longer declares
fires nothing) with the database's time, fire every due slot through ``durable.fire_cron`` (one
spawn per slot, whatever the number of workers: the slot's idempotency key decides), then sleep
until the next slot or :data:`REFRESH_S`, whichever comes first.

Which slots are due: the newest slot fired while it is on time (every worker that reaches a slot
fires it; all but one get its task back), and the slots after the schedule's ``fired_through``
(the slots dealt with) and at or before now, as its :class:`~durable.protocol.cron.Missed`
policy keeps them: ``skip`` fires only the slots at most :data:`LATE_SLOT` late (after a stall
or downtime the older ones are skipped, not fired late one after another), ``latest`` also the
newest slot when none is that recent, and ``all`` every one of them, at most
:data:`CATCH_UP_MAX` (the newest; the older ones are skipped and logged). A fire that fails (the
database unreachable) is tried again at the next pass while the policy still keeps the slot.

The late-slot rule holds after a stall: each slot is checked again against the clock just before
it fires, and ``durable.fire_cron`` refuses a ``skip`` slot more than a minute late by the
database's clock (a worker that stalled between choosing a slot and firing it, or a statement
held up in the database): ``cron.late_skipped`` or ``cron.not_fired`` is logged.

Time is the database's: the scheduler's default clock follows ``durable.now()`` (read with every
pass), so a worker whose own clock is off fires slots on time; tests give the scheduler a clock
of their own (:class:`SchedulerClock`). See :mod:`durable.protocol.cron` for the expressions and
their time zones.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio

from durable.client import Client
from durable.protocol.cron import CronExpr, Missed, ScheduleSource
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger
from durable.protocol.records import CronSchedule, SpawnOptions
from durable.runtime.deadlines import ReconnectBackoff

__all__ = [
    "CATCH_UP_MAX",
    "LATE_SLOT",
    "REFRESH_S",
    "CronExpr",
    "CronJob",
    "DatabaseClock",
    "SchedulerClock",
    "due_slots",
    "run_cron_scheduler",
]

log = get_logger()

#: After a stall or downtime, slots older than this are skipped (policy ``skip``) rather than
#: fired late one after another.
LATE_SLOT = timedelta(minutes=1)
#: The most slots policy ``all`` fires in one catch-up (the newest ones).
CATCH_UP_MAX = 100
#: How often a worker reads the schedules again when no slot comes sooner: a schedule added,
#: changed or resumed at run time fires within this.
REFRESH_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CronJob:
    """A periodic spawn declared with ``app.cron``: ``task_name`` on ``queue`` at every slot of
    ``schedule``, with ``params`` and ``options``; ``missed`` says what happens to the slots
    that pass while no worker fires them."""

    name: str
    schedule: CronExpr
    task_name: str
    queue: str
    params: Any
    options: SpawnOptions
    missed: Missed = Missed.SKIP

    def idempotency_key(self, slot: datetime) -> str:
        """One spawn per slot, whichever worker (or how many) fires it."""
        return f"durable:cron:{self.name}:{slot.isoformat()}"


class SchedulerClock(Protocol):
    """The scheduler's time: ``now()``, told the database's time with every read of the
    schedules (``sync``), and a sleep until a moment of that time (``sleep_until``)."""

    def now(self) -> datetime: ...

    def sync(self, database_now: datetime) -> None: ...

    async def sleep_until(self, when: datetime) -> None: ...


class DatabaseClock:
    """The database's time: the last ``durable.now()`` read plus the monotonic time since."""

    def __init__(self) -> None:
        self._at: datetime | None = None
        self._mono = 0.0

    def now(self) -> datetime:
        if self._at is None:
            raise RuntimeError("DatabaseClock.now() before the first sync")
        return self._at + timedelta(seconds=time.monotonic() - self._mono)

    def sync(self, database_now: datetime) -> None:
        self._at, self._mono = database_now, time.monotonic()

    async def sleep_until(self, when: datetime) -> None:
        await anyio.sleep(max(0.0, (when - self.now()).total_seconds()))


def due_slots(
    expr: CronExpr,
    missed: Missed,
    fired_through: datetime,
    now: datetime,
    last_slot: datetime | None = None,
) -> tuple[list[datetime], bool]:
    """The slots to fire at ``now``, oldest first, and whether older due slots were left out
    (beyond :data:`CATCH_UP_MAX`, or late under ``skip``/``latest``).

    ``last_slot``, the newest slot fired (by any worker), is fired again while it is the newest
    slot and on time: a worker that comes second gets the slot's task back (``created`` false)
    rather than nothing, so every worker that reached the slot reports it."""
    kept: list[datetime] = []  # newest first
    for slot in expr.slots_back(now):
        if slot <= fired_through:
            if not kept and slot == last_slot and now - slot <= LATE_SLOT:
                return [slot], False  # the newest slot, fired already: fire it again
            return kept[::-1], False
        if missed is Missed.ALL:
            if len(kept) == CATCH_UP_MAX:
                return kept[::-1], True
            kept.append(slot)
        elif now - slot <= LATE_SLOT:
            kept.append(slot)
        else:
            if missed is Missed.LATEST and not kept:
                kept.append(slot)
            return kept[::-1], True
    return kept[::-1], False


async def run_cron_scheduler(
    client: Client,
    jobs: Sequence[CronJob],
    queues: Sequence[str],
    *,
    clock: SchedulerClock | None = None,
    refresh_s: float = REFRESH_S,
) -> None:
    """Fire the due slots of the schedules of ``queues`` until cancelled: the ones added at run
    time and those of ``jobs`` (this worker's code, written to the database first)."""
    clock = clock or DatabaseClock()
    code = {job.name: job for job in jobs}
    warned: set[tuple[str, datetime]] = set()  # (schedule, fired_through) logged as missed
    published = False
    backoff = ReconnectBackoff()
    while True:
        try:
            if not published:
                for job in jobs:
                    await _publish(client, job)
                published = True
            listed = await client.list_cron_schedules(queues)
        except DurableError as exc:
            delay = backoff.next_delay()
            log.warning("cron.unavailable", error=str(exc), retry_in=round(delay, 3))
            await anyio.sleep(delay)
            continue
        backoff.reset()
        clock.sync(listed.now)
        wake = clock.now() + timedelta(seconds=refresh_s)
        for schedule in listed.schedules:
            if schedule.paused or (
                schedule.source is ScheduleSource.CODE and schedule.name not in code
            ):
                continue
            try:
                expr = CronExpr.parse(schedule.expr, schedule.timezone)
            except DurableError as exc:  # written by another client than this one
                log.warning("cron.invalid", cron=schedule.name, error=str(exc))
                continue
            await _fire_due(client, schedule, expr, clock, warned)
            wake = min(wake, expr.next_after(clock.now()))
        await clock.sleep_until(wake)


async def _publish(client: Client, job: CronJob) -> None:
    await client.set_cron_schedule(
        job.name,
        job.schedule.expr,
        job.task_name,
        job.params,
        queue=job.queue,
        timezone=job.schedule.timezone,
        missed=job.missed,
        options=job.options,
        source=ScheduleSource.CODE,
    )


async def _fire_due(
    client: Client,
    schedule: CronSchedule,
    expr: CronExpr,
    clock: SchedulerClock,
    warned: set[tuple[str, datetime]],
) -> None:
    now = clock.now()
    slots, left_out = due_slots(
        expr, schedule.missed, schedule.fired_through, now, schedule.last_slot
    )
    if left_out and (schedule.name, schedule.fired_through) not in warned:
        warned.add((schedule.name, schedule.fired_through))
        log.warning(
            "cron.missed",
            cron=schedule.name,
            missed=str(schedule.missed),
            since=schedule.fired_through.isoformat(),
            firing=len(slots),
        )
    for slot in slots:
        if schedule.missed is Missed.SKIP and clock.now() - slot > LATE_SLOT:
            log.warning("cron.late_skipped", cron=schedule.name, slot=slot.isoformat())
            continue  # the pass took long (a stall): the slot is late now
        try:
            fired = await client.fire_cron(schedule.name, slot)
        except DurableError as exc:
            log.warning(
                "cron.spawn_failed", cron=schedule.name, slot=slot.isoformat(), error=str(exc)
            )
            return  # the next pass tries again, if the policy still keeps the slot
        if fired is None:  # late by the database's clock (skip), or paused or removed since
            log.info("cron.not_fired", cron=schedule.name, slot=slot.isoformat())
            if schedule.missed is Missed.SKIP:
                continue  # a newer slot may still be on time
            return
        task_id, created = fired
        log.info(
            "cron.fired",
            cron=schedule.name,
            slot=slot.isoformat(),
            task_id=str(task_id),
            created=created,
        )
