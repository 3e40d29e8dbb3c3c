"""Cron expressions: parse the standard five fields and find the next slot, in UTC.

An expression is five fields separated by blanks::

    minute  hour  day-of-month  month  day-of-week
    0-59    0-23  1-31          1-12   0-7 (0 and 7 are Sunday)
                                JAN-DEC SUN-SAT

Each field is ``*`` or a comma-separated list of items; an item is a number ``5``, a range ``1-5``,
or either of those or ``*`` followed by a step: ``*/15``, ``0-30/10``, ``5/20`` (``5-59/20``).
Month and weekday names are three letters, in any case, and may stand wherever a number may:
``MON-FRI``, ``JAN,JUL``. Nicknames stand for a whole expression: ``@yearly`` (``@annually``),
``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and ``@hourly``.

The day rule is Vixie cron's: when both day-of-month and day-of-week are restricted (neither is
exactly ``*``), a day matches if *either* field matches; otherwise it must match both.
``0 0 13 * FRI`` fires on every 13th and on every Friday. (crontab(5) counts any field starting
with ``*``, such as ``*/2``, as unrestricted; here only a bare ``*`` is, as in croniter and
robfig/cron.)

Slots are computed in UTC: ``0 9 * * *`` fires at 09:00 UTC whatever the caller's timezone. An
expression that can never fire (``0 0 30 2 *``) is refused when parsed.
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, datetime, timedelta
from typing import Any

import anyio

from durable.client import Client
from durable.protocol.errors import DurableError, InvalidArgument
from durable.protocol.log import get_logger
from durable.protocol.records import SpawnOptions

__all__ = ["CronExpr", "CronJob", "run_cron_jobs"]

log = get_logger()

#: After a stall (a slow spawn, a suspended process), slots older than this are skipped rather
#: than fired late one after another.
_LATE_SLOT = timedelta(minutes=1)

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = {name.upper(): n for n, name in enumerate(calendar.month_abbr) if name}
_WEEKDAY_NAMES = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
#: The most days each month can have (February in a leap year).
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: How far ahead :meth:`CronExpr.next_after` looks: a parsed expression always fires within this,
#: as the longest wait is for a February 29th (2096 -> 2104, 2100 not being a leap year).
_HORIZON_YEARS = 8


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    #: Where ``*`` and an open ``a/n`` end (day-of-week accepts 7 but ``*`` stops at 6).
    star_high: int
    names: dict[str, int] | None = None
    names_hint: str = ""


_MINUTE = _Field("minute", 0, 59, 59)
_HOUR = _Field("hour", 0, 23, 23)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31, 31)
_MONTH = _Field("month", 1, 12, 12, _MONTH_NAMES, " or a month name (JAN-DEC)")
_DAY_OF_WEEK = _Field("day-of-week", 0, 7, 6, _WEEKDAY_NAMES, " or a weekday name (SUN-SAT)")


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CronExpr:
    """A parsed cron expression; build one with :meth:`parse`.

    Each field holds the sorted values it allows; ``days_of_week`` counts Sunday as 0.
    """

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days_of_month: tuple[int, ...]
    months: tuple[int, ...]
    days_of_week: tuple[int, ...]
    #: Both day fields are restricted, so a day matching either one is enough (Vixie's rule).
    either_day: bool

    @classmethod
    def parse(cls, expr: str) -> CronExpr:
        """Parse ``expr``; raise :class:`~durable.protocol.errors.InvalidArgument` naming the bad
        field."""
        if not isinstance(expr, str):
            raise InvalidArgument(f"a cron expression must be a string, got {expr!r}")
        text = expr.strip()
        if text.startswith("@"):
            try:
                text = _NICKNAMES[text.lower()]
            except KeyError:
                raise InvalidArgument(
                    f"invalid cron expression {expr!r}: unknown nickname {text!r} — use "
                    "@yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                ) from None
        parts = text.split()
        if len(parts) != 5:
            raise InvalidArgument(
                f"invalid cron expression {expr!r}: expected 5 fields (minute hour day-of-month "
                f"month day-of-week) or a nickname such as @daily, got {len(parts)}"
            )
        minute, hour, dom, month, dow = parts
        try:
            cron = cls(
                expr=expr,
                minutes=_parse_field(minute, _MINUTE),
                hours=_parse_field(hour, _HOUR),
                days_of_month=_parse_field(dom, _DAY_OF_MONTH),
                months=_parse_field(month, _MONTH),
                days_of_week=_parse_field(dow, _DAY_OF_WEEK),
                either_day=dom != "*" and dow != "*",
            )
        except ValueError as exc:
            raise InvalidArgument(f"invalid cron expression {expr!r}: {exc}") from None
        if not cron.either_day and not any(
            day <= _MAX_DAYS[m] for m in cron.months for day in cron.days_of_month
        ):
            raise InvalidArgument(
                f"invalid cron expression {expr!r}: day-of-month {dom!r} never occurs in "
                f"month {month!r}, so it never fires"
            )
        return cron

    def next_after(self, when: datetime) -> datetime:
        """The first slot strictly after ``when`` (timezone-aware), as a UTC datetime.

        The search skips whole months, days and hours that cannot match, so it takes at most a few
        hundred steps.
        """
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidArgument(
                f"next_after needs a timezone-aware datetime, got the naive {when!r} — "
                "attach a tzinfo (datetime.UTC, a zoneinfo.ZoneInfo)"
            )
        start = when.astimezone(UTC)
        # Components rather than datetime arithmetic: no overflow near MAXYEAR, and cheap carries.
        year, month, day, hour, minute = (
            start.year,
            start.month,
            start.day,
            start.hour,
            start.minute,
        )
        minute += 1
        last_year = min(year + _HORIZON_YEARS, MAXYEAR)
        while year <= last_year:
            if minute > 59:
                minute, hour = 0, hour + 1
            if hour > 23:
                hour, day = 0, day + 1
            if day > calendar.monthrange(year, month)[1]:
                day, month = 1, month + 1
            if month > 12:
                month, year = 1, year + 1
                continue
            if month not in self.months:
                i = bisect.bisect_left(self.months, month)
                if i == len(self.months):
                    year, month = year + 1, self.months[0]
                else:
                    month = self.months[i]
                day, hour, minute = 1, 0, 0
                continue
            if not self._day_matches(year, month, day):
                day, hour, minute = day + 1, 0, 0
                continue
            if hour not in self.hours:
                i = bisect.bisect_left(self.hours, hour)
                if i == len(self.hours):
                    day, hour, minute = day + 1, 0, 0
                else:
                    hour, minute = self.hours[i], 0
                continue
            if minute not in self.minutes:
                i = bisect.bisect_left(self.minutes, minute)
                if i == len(self.minutes):
                    hour, minute = hour + 1, 0
                else:
                    minute = self.minutes[i]
                continue
            return datetime(year, month, day, hour, minute, tzinfo=UTC)
        if last_year == MAXYEAR:
            raise InvalidArgument(
                f"cron expression {self.expr!r} has no slot after {when.isoformat()} "
                f"before the year {MAXYEAR + 1}"
            )
        raise InvalidArgument(
            f"cron expression {self.expr!r} never fires: no slot in the {_HORIZON_YEARS} years "
            f"after {when.isoformat()}"
        )

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        in_month = day in self.days_of_month
        in_week = (calendar.weekday(year, month, day) + 1) % 7 in self.days_of_week  # Sunday = 0
        return (in_month or in_week) if self.either_day else (in_month and in_week)

    def __repr__(self) -> str:
        return f"CronExpr.parse({self.expr!r})"


def _parse_field(text: str, field: _Field) -> tuple[int, ...]:
    """The sorted values ``text`` allows; ``ValueError`` with a message naming the field."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"{field.name} {text!r} has an empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()):
                raise ValueError(f"{field.name} step {step_text!r} in {item!r} is not a number")
            step = int(step_text)
            if step < 1:
                raise ValueError(f"{field.name} step in {item!r} must be at least 1")
        if base == "*":
            low, high = field.low, field.star_high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _parse_value(first, item, field), _parse_value(last, item, field)
            if low > high:
                raise ValueError(
                    f"{field.name} range {item!r} runs backwards — write the lower bound first"
                )
        else:
            low = _parse_value(base, item, field)
            high = max(field.star_high, low) if slash else low  # `a/n` runs to the field's end
        values.update(range(low, high + 1, step))
    if field is _DAY_OF_WEEK and 7 in values:
        values = (values - {7}) | {0}  # 7 is Sunday too
    return tuple(sorted(values))


def _parse_value(token: str, item: str, field: _Field) -> int:
    if token.isascii() and token.isdigit():
        value = int(token)
        if not field.low <= value <= field.high:
            raise ValueError(
                f"{field.name} {value} is out of range {field.low}-{field.high}"
                + (f" in {item!r}" if item != token else "")
            )
        return value
    if field.names is not None and token.upper() in field.names:
        return field.names[token.upper()]
    if not token:
        raise ValueError(f"{field.name} {item!r} is missing a number{field.names_hint}")
    raise ValueError(f"{field.name} {token!r} is not a number{field.names_hint}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CronJob:
    """A periodic spawn registered with ``app.cron``: ``task_name`` on ``queue`` at every slot of
    ``schedule``, with ``params`` and ``options``."""

    name: str
    schedule: CronExpr
    task_name: str
    queue: str
    params: Any
    options: SpawnOptions

    def idempotency_key(self, slot: datetime) -> str:
        """One spawn per slot, whichever worker (or how many) fires it."""
        return f"durable:cron:{self.name}:{slot.isoformat()}"


async def run_cron_jobs(client: Client, jobs: Sequence[CronJob]) -> None:
    """Fire every job at each of its slots until cancelled (a worker runs this for the jobs of
    its queues). A slot missed while the database was unreachable is logged and skipped."""
    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(_run_cron_job, client, job)


async def _run_cron_job(client: Client, job: CronJob) -> None:
    slot = job.schedule.next_after(datetime.now(UTC))
    while True:
        wait = (slot - datetime.now(UTC)).total_seconds()
        if wait > 0:
            await anyio.sleep(wait)  # the wall clock decides: sleep again if it is not time yet
            continue
        # one task per slot: the slot's key decides, not the task's uniqueness (which would make
        # every later slot a duplicate of the first)
        options = dataclasses.replace(
            job.options, idempotency_key=job.idempotency_key(slot), unique=None
        )
        try:
            info = await client.spawn(job.queue, job.task_name, job.params, options)
        except DurableError as exc:
            log.warning("cron.spawn_failed", cron=job.name, slot=slot.isoformat(), error=str(exc))
        else:
            log.info(
                "cron.fired",
                cron=job.name,
                slot=slot.isoformat(),
                task_id=str(info.task_id),
                created=info.created,
            )
        slot = job.schedule.next_after(max(slot, datetime.now(UTC) - _LATE_SLOT))
