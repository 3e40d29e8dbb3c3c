"""Which slots are due after a stall or downtime: the missed-slot policies (skip, latest, all),
the one-minute late-slot rule, and the bound on a catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from durable.protocol.cron import CronExpr, Missed
from durable.runtime.cron import CATCH_UP_MAX, LATE_SLOT, due_slots

EVERY_MINUTE = CronExpr.parse("* * * * *")
HOURLY = CronExpr.parse("0 * * * *")
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


@pytest.mark.parametrize("missed", list(Missed))
def test_a_slot_on_time_fires_under_every_policy(missed: Missed) -> None:
    # fired through 09:59; now is 10:00:00.2, the 10:00 slot just came
    now = T0 + timedelta(milliseconds=200)
    assert due_slots(EVERY_MINUTE, missed, T0 - minutes(1), now) == ([T0], False)


@pytest.mark.parametrize("missed", list(Missed))
def test_nothing_is_due_before_the_next_slot(missed: Missed) -> None:
    assert due_slots(EVERY_MINUTE, missed, T0, T0 + timedelta(seconds=59)) == ([], False)


def test_skip_fires_the_slots_at_most_a_minute_late_and_skips_the_older_ones() -> None:
    # a stall of 3.5 minutes: 10:01 .. 10:03 passed; 10:03 is 30 s late, 10:02 90 s
    now = T0 + minutes(3.5)
    slots, left_out = due_slots(EVERY_MINUTE, Missed.SKIP, T0, now)
    assert slots == [T0 + minutes(3)]
    assert left_out
    # a slot exactly a minute late is still on time
    assert due_slots(EVERY_MINUTE, Missed.SKIP, T0, T0 + minutes(2)) == (
        [T0 + minutes(1), T0 + minutes(2)],
        False,
    )
    assert minutes(1) == LATE_SLOT


def test_skip_after_downtime_fires_nothing_until_the_next_slot() -> None:
    # hourly; the workers were down from 10:00 to 12:30: 11:00 and 12:00 are skipped
    now = T0 + minutes(150)
    assert due_slots(HOURLY, Missed.SKIP, T0, now) == ([], True)


def test_latest_fires_the_newest_missed_slot_once() -> None:
    now = T0 + minutes(150)
    assert due_slots(HOURLY, Missed.LATEST, T0, now) == ([T0 + minutes(120)], True)
    # once fired, it is behind fired_through: nothing more
    assert due_slots(HOURLY, Missed.LATEST, T0 + minutes(120), now) == ([], False)


def test_all_fires_every_missed_slot_oldest_first() -> None:
    now = T0 + minutes(150)
    assert due_slots(HOURLY, Missed.ALL, T0, now) == (
        [T0 + minutes(60), T0 + minutes(120)],
        False,
    )


def test_all_is_bounded_to_the_newest_slots() -> None:
    # a day down on an every-minute schedule: 1440 slots passed, CATCH_UP_MAX fire
    now = T0 + timedelta(days=1)
    slots, left_out = due_slots(EVERY_MINUTE, Missed.ALL, T0, now)
    assert left_out
    assert len(slots) == CATCH_UP_MAX == 100
    assert slots[-1] == now
    assert slots[0] == now - minutes(CATCH_UP_MAX - 1)
    assert slots == sorted(slots)


def test_all_across_the_autumn_change_fires_the_repeated_hour_twice() -> None:
    paris_hourly = CronExpr.parse("0 * * * *", "Europe/Paris")
    fired_through = datetime(2025, 10, 25, 23, 30, tzinfo=UTC)  # 01:30 CEST
    now = datetime(2025, 10, 26, 2, 30, tzinfo=UTC)  # 03:30 CET
    slots, _ = due_slots(paris_hourly, Missed.ALL, fired_through, now)
    # local 02:00 CEST, 02:00 CET, 03:00 CET: every real hour, each once
    assert slots == [
        datetime(2025, 10, 26, 0, tzinfo=UTC),
        datetime(2025, 10, 26, 1, tzinfo=UTC),
        datetime(2025, 10, 26, 2, tzinfo=UTC),
    ]


def test_the_last_slot_fired_is_due_again_while_it_is_on_time() -> None:
    # another worker fired 10:00 already: this one fires it too (and gets its task back)
    now = T0 + timedelta(seconds=5)
    assert due_slots(EVERY_MINUTE, Missed.SKIP, T0, now, last_slot=T0) == ([T0], False)
    # not once it is late
    later = T0 + minutes(1.5)
    assert due_slots(EVERY_MINUTE, Missed.SKIP, T0, later, last_slot=T0) == (
        [T0 + minutes(1)],
        False,
    )


def test_the_last_slot_is_not_fired_again_once_a_newer_one_came() -> None:
    now = T0 + minutes(1)
    assert due_slots(EVERY_MINUTE, Missed.SKIP, T0, now, last_slot=T0) == ([now], False)
