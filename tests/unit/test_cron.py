"""Cron expressions: parsing (by cronsim), the next slot after a time, the slots before one, time
zones across both DST changes, the missed-slot policies, and the errors for bad input.

The cases of the hand-written parser this replaced are kept where the library reads them the
same; where it reads them differently (the day rule for ``*/2``, the error texts, ``L``), the case
says so (see the docstring of ``durable/protocol/cron.py``)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from durable.protocol.cron import check_time_zone
from durable.protocol.errors import InvalidArgument, InvalidTimeZone
from durable.runtime.cron import CronExpr


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        pytest.param("* * * * *", utc(2025, 3, 1, 10, 7, 30), utc(2025, 3, 1, 10, 8), id="every"),
        pytest.param("*/15 * * * *", utc(2025, 3, 1, 10, 7), utc(2025, 3, 1, 10, 15), id="*/15"),
        pytest.param(
            "*/15 * * * *", utc(2025, 12, 31, 23, 50), utc(2026, 1, 1, 0, 0), id="*/15-new-year"
        ),
        pytest.param("0 * * * *", utc(2025, 3, 1, 10, 7), utc(2025, 3, 1, 11, 0), id="hourly"),
        pytest.param("@hourly", utc(2025, 3, 1, 23, 0), utc(2025, 3, 2, 0, 0), id="@hourly"),
        pytest.param("30 3 * * *", utc(2025, 3, 1, 4, 0), utc(2025, 3, 2, 3, 30), id="03:30"),
        pytest.param("5/20 * * * *", utc(2025, 3, 1, 10, 26), utc(2025, 3, 1, 10, 45), id="a/n"),
        pytest.param(
            "0-30/10 8-9 * * *", utc(2025, 3, 1, 9, 31), utc(2025, 3, 2, 8, 0), id="a-b/n"
        ),
        # Friday 2025-03-07 09:00 is a slot: the next one is Monday's.
        pytest.param(
            "0 9 * * MON-FRI", utc(2025, 3, 7, 9, 0), utc(2025, 3, 10, 9, 0), id="weekdays"
        ),
        pytest.param("0 12 1 jan,Jul *", utc(2025, 3, 1), utc(2025, 7, 1, 12, 0), id="month-names"),
        pytest.param("0 0 * dec sun", utc(2025, 1, 1), utc(2025, 12, 7), id="lowercase-names"),
        pytest.param("0 0 * * 7", utc(2025, 3, 1), utc(2025, 3, 2), id="7-is-sunday"),
        pytest.param("0 0 31 * *", utc(2025, 4, 1), utc(2025, 5, 31), id="skips-short-months"),
        # Both day fields restricted: the 13th (a Friday) or any Monday.
        pytest.param("0 0 13 * MON", utc(2025, 6, 10), utc(2025, 6, 13), id="or-by-dom"),
        pytest.param("0 0 13 * MON", utc(2025, 6, 13), utc(2025, 6, 16), id="or-by-dow"),
        # */2 starts with *: Debian's cron (and cronsim) count it unrestricted, so both fields
        # must match: an odd day that is a Monday. (The old parser read it as "or", 2025-06-02.)
        pytest.param("0 0 */2 * MON", utc(2025, 6, 1), utc(2025, 6, 9), id="and-with-step"),
        # One day field is *: both must match; 2025-06-01 is a Sunday.
        pytest.param("0 0 * * SUN", utc(2025, 5, 26), utc(2025, 6, 1), id="and-by-dow"),
        pytest.param("@weekly", utc(2025, 3, 1), utc(2025, 3, 2), id="@weekly"),
        pytest.param("@monthly", utc(2025, 12, 15), utc(2026, 1, 1), id="@monthly-year-end"),
        pytest.param("@yearly", utc(2025, 1, 1), utc(2026, 1, 1), id="@yearly"),
        pytest.param("0 0 29 2 *", utc(2025, 3, 1), utc(2028, 2, 29), id="feb-29"),
        # 2100 is not a leap year: the longest wait there is.
        pytest.param("0 0 29 2 *", utc(2096, 3, 1), utc(2104, 2, 29), id="feb-29-over-2100"),
    ],
)
def test_next_after_finds_the_next_slot(expr: str, after: datetime, expected: datetime) -> None:
    assert CronExpr.parse(expr).next_after(after) == expected


def test_next_after_is_strictly_after_a_slot() -> None:
    cron = CronExpr.parse("*/15 * * * *")
    assert cron.next_after(utc(2025, 3, 1, 10, 15)) == utc(2025, 3, 1, 10, 30)
    assert cron.next_after(utc(2025, 3, 1, 10, 15, 0, 1)) == utc(2025, 3, 1, 10, 30)


def test_next_after_returns_utc_on_the_minute() -> None:
    slot = CronExpr.parse("* * * * *").next_after(utc(2025, 3, 1, 10, 7, 59, 999_999))
    assert slot == utc(2025, 3, 1, 10, 8)
    assert slot.tzinfo is UTC
    assert (slot.second, slot.microsecond) == (0, 0)


def test_next_after_computes_in_utc_for_any_timezone() -> None:
    new_york = timezone(timedelta(hours=-5))
    # 08:00 in New York is 13:00 UTC: today's 09:00 UTC slot has passed.
    slot = CronExpr.parse("0 9 * * *").next_after(datetime(2025, 3, 1, 8, 0, tzinfo=new_york))
    assert slot == utc(2025, 3, 2, 9, 0)
    assert slot.tzinfo is UTC


def test_next_after_refuses_a_naive_datetime() -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        CronExpr.parse("* * * * *").next_after(datetime(2025, 3, 1))


def test_next_after_stops_at_the_end_of_the_calendar() -> None:
    with pytest.raises(InvalidArgument, match="before the year 10000"):
        CronExpr.parse("* * * * *").next_after(utc(9999, 12, 31, 23, 59))


def test_next_after_gives_up_on_an_expression_that_never_fires() -> None:
    # parse() accepts it (days 1 and 21 that are the last Monday of their month), the search
    # must still end
    never = CronExpr.parse("0 0 */20 * 1L")
    with pytest.raises(InvalidArgument, match="never fires"):
        never.next_after(utc(2025, 1, 1))


def test_parse_keeps_the_five_fields_it_stands_for() -> None:
    cron = CronExpr.parse("0-10/5 */6 1,15 JAN-MAR/2 5-7")
    assert cron.fields == "0-10/5 */6 1,15 JAN-MAR/2 5-7"
    assert cron.timezone == "UTC"
    assert cron.either_day
    # the fields mean what they say: 00:00, 00:05, 00:10, then 06:00 on a day that matches
    slot = CronExpr.parse("0-10/5 */6 1,15 JAN-MAR/2 *").next_after(utc(2025, 3, 1, 0, 10))
    assert slot == utc(2025, 3, 1, 6, 0)


def test_either_day_needs_both_day_fields_restricted() -> None:
    assert not CronExpr.parse("0 0 1 * *").either_day
    assert not CronExpr.parse("0 0 * * 1").either_day
    assert CronExpr.parse("0 0 1,15 * 1").either_day
    # Debian's rule: a field starting with * is unrestricted (the old parser said "either")
    assert not CronExpr.parse("0 0 */2 * 1").either_day


@pytest.mark.parametrize(
    ("nickname", "expansion"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_nicknames_stand_for_their_expansion(nickname: str, expansion: str) -> None:
    parsed = CronExpr.parse(nickname)
    assert parsed.expr == nickname
    assert dataclasses.replace(parsed, expr=expansion) == CronExpr.parse(expansion)


def test_parse_keeps_the_original_text() -> None:
    cron = CronExpr.parse("  0  9 * *  mon-fri ")
    assert cron.expr == "  0  9 * *  mon-fri "
    assert repr(cron) == "CronExpr.parse('  0  9 * *  mon-fri ')"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        # the library names the field, not the value's range (the old parser's texts were
        # longer; each expression is still refused, naming the same field)
        ("61 * * * *", "bad minute field"),
        ("* 24 * * *", "bad hour field"),
        ("* * 0 * *", "bad day-of-month field"),
        ("* * 32 * *", "bad day-of-month field"),
        ("* * * 13 *", "bad month field"),
        ("* * * * 8", "bad day-of-week field"),
        ("0-60/5 * * * *", "bad minute field"),
        ("* * * FOO *", "bad month field"),
        ("* * * * FUNDAY", "bad day-of-week field"),
        ("MON * * * *", "bad minute field"),
        ("* * * MON *", "bad month field"),
        ("* * * * JAN", "bad day-of-week field"),
        ("x * * * *", "bad minute field"),
        ("-1 * * * *", "bad minute field"),
        ("1- * * * *", "bad minute field"),
        ("/5 * * * *", "bad minute field"),
        ("1,,2 * * * *", "bad minute field"),
        ("1, * * * *", "bad minute field"),
        ("1-2-3 * * * *", "bad minute field"),
        ("30-10 * * * *", "bad minute field"),
        ("* * * * SAT-SUN", "bad day-of-week field"),
        ("*/0 * * * *", "bad minute field"),
        ("* */x * * *", "bad hour field"),
        ("* * * * 1/-2", "bad day-of-week field"),
        ("* * ? * *", "bad day-of-month field"),
        ("\u0663 * * * *", "bad minute field"),  # an Arabic-Indic three
        ("0 0 30 2 *", "bad day-of-month field"),  # never occurs in February
        ("0 0 31 4,6,9,11 *", "bad day-of-month field"),
        ("", "expected 5 fields .* got 0"),
        ("* * * *", "expected 5 fields .* got 4"),
        # six fields would be seconds for cronsim: a slot is a minute here
        ("* * * * * *", "expected 5 fields .* got 6"),
        ("@every 5", "unknown nickname '@every 5'"),
        ("@reboot", "unknown nickname '@reboot'"),
    ],
)
def test_parse_refuses_a_bad_expression_naming_the_field(expr: str, message: str) -> None:
    with pytest.raises(
        InvalidArgument, match=f"^invalid cron expression {re.escape(repr(expr))}: {message}"
    ):
        CronExpr.parse(expr)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # cronsim reads L (the last day), LW (the last weekday), 5L (the last Friday) and
        # MON#2 (the second Monday); the old parser refused them
        pytest.param("0 0 L * *", utc(2025, 2, 3), utc(2025, 2, 28), id="L"),
        pytest.param("0 0 LW * *", utc(2025, 5, 1), utc(2025, 5, 30), id="LW"),
        pytest.param("0 0 * * 5L", utc(2025, 5, 1), utc(2025, 5, 30), id="5L"),
        pytest.param("0 0 * * MON#2", utc(2025, 5, 1), utc(2025, 5, 12), id="MON#2"),
    ],
)
def test_the_library_reads_last_and_nth_days(
    expr: str, after: datetime, expected: datetime
) -> None:
    assert CronExpr.parse(expr).next_after(after) == expected


def test_invalid_argument_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="bad minute field"):
        CronExpr.parse("99 * * * *")


# --- time zones and DST ---------------------------------------------------------------------------
# Europe/Paris: on 2025-03-30 the clock jumps from 02:00 to 03:00 (01:00 UTC); on 2025-10-26 it
# goes back from 03:00 to 02:00 (01:00 UTC), so 02:00-02:59 happens twice (00:xx and 01:xx UTC).
PARIS = "Europe/Paris"


def test_a_fixed_local_time_is_read_in_its_time_zone() -> None:
    cron = CronExpr.parse("0 9 * * *", PARIS)
    assert cron.next_after(utc(2025, 1, 10, 12)) == utc(2025, 1, 11, 8)  # CET, UTC+1
    assert cron.next_after(utc(2025, 7, 10, 12)) == utc(2025, 7, 11, 7)  # CEST, UTC+2
    assert repr(cron) == "CronExpr.parse('0 9 * * *', 'Europe/Paris')"


def test_a_slot_in_the_skipped_hour_runs_at_the_first_minute_after_it() -> None:
    cron = CronExpr.parse("30 2 * * *", PARIS)
    # 02:30 does not exist on 2025-03-30: it runs at 03:00 CEST (01:00 UTC), once
    assert cron.next_after(utc(2025, 3, 29, 12)) == utc(2025, 3, 30, 1, 0)
    assert cron.next_after(utc(2025, 3, 30, 1, 0)) == utc(2025, 3, 31, 0, 30)
    assert list(itertools.islice(cron.slots_back(utc(2025, 3, 31, 12)), 3)) == [
        utc(2025, 3, 31, 0, 30),
        utc(2025, 3, 30, 1, 0),
        utc(2025, 3, 29, 1, 30),
    ]


def test_a_slot_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    cron = CronExpr.parse("30 2 * * *", PARIS)
    # 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET): the first one only
    assert cron.next_after(utc(2025, 10, 25, 12)) == utc(2025, 10, 26, 0, 30)
    assert cron.next_after(utc(2025, 10, 26, 0, 30)) == utc(2025, 10, 27, 1, 30)
    assert list(itertools.islice(cron.slots_back(utc(2025, 10, 27, 12)), 3)) == [
        utc(2025, 10, 27, 1, 30),
        utc(2025, 10, 26, 0, 30),
        utc(2025, 10, 25, 0, 30),
    ]


def hourly_slots(expr: CronExpr, after: datetime, count: int) -> list[datetime]:
    slots = []
    for _ in range(count):
        after = expr.next_after(after)
        slots.append(after)
    return slots


def test_an_hourly_schedule_runs_every_real_hour_across_both_changes() -> None:
    cron = CronExpr.parse("0 * * * *", PARIS)
    # spring: local 01:00, then 03:00 (02:00 does not exist); one hour apart in UTC
    assert hourly_slots(cron, utc(2025, 3, 29, 23, 30), 3) == [
        utc(2025, 3, 30, 0),
        utc(2025, 3, 30, 1),
        utc(2025, 3, 30, 2),
    ]
    # autumn: local 02:00 twice (00:00 and 01:00 UTC), then 03:00
    assert hourly_slots(cron, utc(2025, 10, 25, 23, 30), 3) == [
        utc(2025, 10, 26, 0),
        utc(2025, 10, 26, 1),
        utc(2025, 10, 26, 2),
    ]
    # backwards, the same slots
    assert list(itertools.islice(cron.slots_back(utc(2025, 10, 26, 2)), 3)) == [
        utc(2025, 10, 26, 2),
        utc(2025, 10, 26, 1),
        utc(2025, 10, 26, 0),
    ]


def test_slots_back_includes_the_instant_itself_and_is_newest_first() -> None:
    cron = CronExpr.parse("*/15 * * * *")
    assert list(itertools.islice(cron.slots_back(utc(2025, 3, 1, 10, 15)), 3)) == [
        utc(2025, 3, 1, 10, 15),
        utc(2025, 3, 1, 10, 0),
        utc(2025, 3, 1, 9, 45),
    ]
    assert next(cron.slots_back(utc(2025, 3, 1, 10, 14, 59, 999_999))) == utc(2025, 3, 1, 10, 0)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", " UTC", "europe/paris ", "../etc"])
def test_parse_refuses_an_unknown_time_zone(zone: str) -> None:
    with pytest.raises(InvalidTimeZone, match="use an IANA name") as caught:
        CronExpr.parse("0 9 * * *", zone)
    assert caught.value.timezone == zone
    assert isinstance(caught.value, InvalidArgument)


def test_check_time_zone_accepts_iana_names() -> None:
    assert check_time_zone("UTC") == "UTC"
    assert check_time_zone("America/New_York") == "America/New_York"
