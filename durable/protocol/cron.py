"""Cron expressions in an IANA time zone: what a slot is, read by the ``cronsim`` library.

An expression is five fields separated by blanks, or a nickname::

    minute  hour  day-of-month  month  day-of-week
    0-59    0-23  1-31          1-12   0-7 (0 and 7 are Sunday)
                                JAN-DEC SUN-SAT

Each field is ``*`` or a comma-separated list of items; an item is a number ``5``, a range ``1-5``,
or either of those or ``*`` followed by a step: ``*/15``, ``0-30/10``, ``5/20`` (``5-59/20``).
Month and weekday names are three letters, in any case. ``L`` (the last day of the month),
``LW`` (its last weekday), ``5L`` (its last Friday) and ``MON#2`` (its second Monday) are
accepted too. Nicknames stand for a whole expression: ``@yearly`` (``@annually``), ``@monthly``,
``@weekly``, ``@daily`` (``@midnight``) and ``@hourly``. A sixth (seconds) field is refused: a
slot is a minute.

**Why cronsim, not our own parser nor croniter.** The hand-written parser this replaces read UTC
only; time zones bring the DST rules, which are where cron implementations differ and go wrong.
``cronsim`` (BSD-3, one pure-Python module, no dependencies, typed, Python >= 3.11, written for and
used by Healthchecks.io, maintained since 2022) aims to read every expression exactly as Debian's
cron does, DST included, and works with :mod:`zoneinfo`; it is small enough to be a required
dependency. ``croniter`` (MIT) needs ``python-dateutil``, was declared unmaintained by its author
in 2024 before another organisation took it over, and its DST handling has a long record of bug
reports; it earns no place over cronsim.

**Where cronsim reads differently from the old parser** (decisions, kept so):

* The day rule is Debian's: when day-of-month and day-of-week both start with something other
  than ``*``, a day matching *either* fires (``0 0 13 * FRI``: every 13th and every Friday);
  when either starts with ``*`` (``*/2`` included, as crontab(5) says) both must match. The old
  parser counted only a bare ``*`` as unrestricted.
* Errors name the field (``bad minute``) without repeating the value's range.
* ``L``, ``LW``, ``nL`` and ``DOW#n`` are accepted (the old parser refused them).

**Time zones and DST**, as Debian's cron, which cronsim follows: an expression whose minute and
hour fields are both fixed (neither starts with ``*``: ``30 2 * * *``, ``0 9,17 * * MON-FRI``)
runs on the local clock's time: a slot in the hour the spring change skips runs at the first
minute after it (``02:30`` runs at ``03:00``), and a slot in the hour the autumn change repeats
runs once, at its first occurrence. Any other expression (``*/15 * * * *``, ``0 * * * *``) runs
on elapsed time: no slot in the skipped hour, and the repeated hour's slots run twice (once per
occurrence), so ``0 * * * *`` fires every real hour. Slots are returned in UTC.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum

from cronsim import CronSim, CronSimError

from durable.protocol.errors import InvalidArgument, InvalidTimeZone

__all__ = ["CronExpr", "Missed", "ScheduleSource", "check_time_zone"]

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: cronsim gives up when no slot comes within this many years of the start.
_HORIZON_YEARS = 50
#: At most this many candidates are looked at for one answer (the autumn repeat of a local time
#: can make cronsim return a slot that is not after the instant asked about; one more step fixes
#: it).
_MAX_STEPS = 10


class Missed(StrEnum):
    """What a schedule does with the slots that passed while no worker fired them (downtime,
    a stall): ``skip`` fires only those at most a minute late, ``latest`` also the newest of the
    later ones, ``all`` every one of them (at most :data:`durable.runtime.cron.CATCH_UP_MAX`,
    the newest)."""

    SKIP = "skip"
    LATEST = "latest"
    ALL = "all"


class ScheduleSource(StrEnum):
    """Where a cron schedule is managed: ``code`` (``app.cron``, written by the workers that
    declare it) or ``api`` (added at run time: ``app.add_cron``, ``durable cron add``)."""

    CODE = "code"
    API = "api"


def check_time_zone(name: object) -> str:
    """``name`` if it is an IANA time zone this machine knows (``UTC``, ``Europe/Paris``), else
    :class:`InvalidTimeZone`."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise InvalidTimeZone(name)
    if name == "UTC":
        return name
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidTimeZone(name) from None
    return name


def _zone(name: str) -> tzinfo:
    # datetime.UTC rather than ZoneInfo("UTC"): cronsim skips its DST handling for it
    return UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CronExpr:
    """A cron expression and the time zone it is read in; build one with :meth:`parse`.

    ``expr`` is the text as given, ``fields`` the five fields it stands for (a nickname
    expanded), ``timezone`` an IANA name.
    """

    expr: str
    fields: str
    timezone: str = "UTC"

    @classmethod
    def parse(cls, expr: str, timezone: str = "UTC") -> CronExpr:
        """Parse ``expr`` in ``timezone``; raise :class:`~durable.protocol.errors.InvalidArgument`
        naming the bad field (:class:`~durable.protocol.errors.InvalidTimeZone` for the zone)."""
        if not isinstance(expr, str):
            raise InvalidArgument(f"a cron expression must be a string, got {expr!r}")
        check_time_zone(timezone)
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
        fields = " ".join(parts)
        try:
            CronSim(fields, datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise InvalidArgument(
                f"invalid cron expression {expr!r}: {str(exc).lower()} field — see "
                "durable/protocol/cron.py for the syntax"
            ) from None
        return cls(expr=expr, fields=fields, timezone=timezone)

    def _sim(self, start: datetime, *, reverse: bool = False) -> CronSim:
        return CronSim(self.fields, start.astimezone(_zone(self.timezone)), reverse=reverse)

    def next_after(self, when: datetime) -> datetime:
        """The first slot strictly after ``when`` (timezone-aware), in UTC."""
        _check_aware(when)
        try:
            sim = self._sim(when)
            for _ in range(_MAX_STEPS):
                slot = next(sim).astimezone(UTC)
                if slot > when:
                    return slot
        except StopIteration:
            raise InvalidArgument(
                f"cron expression {self.expr!r} never fires: no slot in the {_HORIZON_YEARS} "
                f"years after {when.isoformat()}"
            ) from None
        except OverflowError:
            pass
        raise InvalidArgument(
            f"cron expression {self.expr!r} has no slot after {when.isoformat()} "
            "before the year 10000"
        )

    def slots_back(self, when: datetime) -> Iterator[datetime]:
        """The slots at or before ``when`` (timezone-aware), newest first, in UTC; ends when
        there is none in the :data:`_HORIZON_YEARS` years before."""
        _check_aware(when)
        # cronsim's reverse iteration returns the start itself when it has microseconds (and
        # matches): one microsecond more makes ``when`` itself a candidate
        sim = self._sim(when + timedelta(microseconds=1), reverse=True)
        last: datetime | None = None
        try:
            for local in sim:
                slot = local.astimezone(UTC)
                if slot <= when and (last is None or slot < last):
                    last = slot
                    yield slot
        except OverflowError:
            return

    @property
    def either_day(self) -> bool:
        """Both day fields are restricted, so a day matching either one fires (Debian's rule)."""
        return not self._sim(datetime(2000, 1, 1, tzinfo=UTC)).day_and

    def __repr__(self) -> str:
        if self.timezone == "UTC":
            return f"CronExpr.parse({self.expr!r})"
        return f"CronExpr.parse({self.expr!r}, {self.timezone!r})"


def _check_aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgument(
            f"a cron slot needs a timezone-aware datetime, got the naive {when!r} — "
            "attach a tzinfo (datetime.UTC, a zoneinfo.ZoneInfo)"
        )
