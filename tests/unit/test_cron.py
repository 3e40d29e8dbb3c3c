"""Cron expressions: parsing, the next slot after a time, and the errors for bad expressions."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from durable.protocol.errors import InvalidArgument
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
        # */2 is restricted too: odd days or Mondays; 2025-06-02 is an even Monday.
        pytest.param("0 0 */2 * MON", utc(2025, 6, 1), utc(2025, 6, 2), id="or-with-step"),
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
    # parse() refuses this; built by hand, the search must still end.
    never = dataclasses.replace(CronExpr.parse("0 0 29 2 *"), days_of_month=(30,))
    with pytest.raises(InvalidArgument, match="never fires"):
        never.next_after(utc(2025, 1, 1))


def test_parse_expands_each_field() -> None:
    cron = CronExpr.parse("0-10/5 */6 1,15 JAN-MAR/2 5-7")
    assert cron.minutes == (0, 5, 10)
    assert cron.hours == (0, 6, 12, 18)
    assert cron.days_of_month == (1, 15)
    assert cron.months == (1, 3)
    assert cron.days_of_week == (0, 5, 6)
    assert cron.either_day


def test_either_day_needs_both_day_fields_restricted() -> None:
    assert not CronExpr.parse("0 0 1 * *").either_day
    assert not CronExpr.parse("0 0 * * 1").either_day
    assert CronExpr.parse("0 0 */2 * 1").either_day


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
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month 32 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("0-60/5 * * * *", "minute 60 is out of range 0-59 in '0-60/5'"),
        ("* * * FOO *", "month 'FOO' is not a number or a month name"),
        ("* * * * FUNDAY", "day-of-week 'FUNDAY' is not a number or a weekday name"),
        ("MON * * * *", "minute 'MON' is not a number"),
        ("* * * MON *", "month 'MON' is not a number"),
        ("* * * * JAN", "day-of-week 'JAN' is not a number"),
        ("x * * * *", "minute 'x' is not a number"),
        ("-1 * * * *", "minute '-1' is missing a number"),
        ("1- * * * *", "minute '1-' is missing a number"),
        ("/5 * * * *", "minute '/5' is missing a number"),
        ("1,,2 * * * *", "minute '1,,2' has an empty list item"),
        ("1, * * * *", "minute '1,' has an empty list item"),
        ("1-2-3 * * * *", "minute '2-3' is not a number"),
        ("30-10 * * * *", "minute range '30-10' runs backwards"),
        ("* * * * SAT-SUN", "day-of-week range 'SAT-SUN' runs backwards"),
        ("*/0 * * * *", "minute step in '\\*/0' must be at least 1"),
        ("* */x * * *", "hour step 'x' in '\\*/x' is not a number"),
        ("* * * * 1/-2", "day-of-week step '-2' in '1/-2' is not a number"),
        ("* * ? * *", "day-of-month '\\?' is not a number"),
        ("* * L * *", "day-of-month 'L' is not a number"),
        ("\u0663 * * * *", "minute '\u0663' is not a number"),  # an Arabic-Indic three
        ("0 0 30 2 *", "day-of-month '30' never occurs in month '2', so it never fires"),
        ("0 0 31 4,6,9,11 *", "day-of-month '31' never occurs in month '4,6,9,11'"),
        ("", "expected 5 fields .* got 0"),
        ("* * * *", "expected 5 fields .* got 4"),
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


def test_invalid_argument_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="minute 99"):
        CronExpr.parse("99 * * * *")
