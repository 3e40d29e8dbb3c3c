"""The command line's argument types: durations read their units here, and what a duration may be
is ``durations.seconds``'s; a bad value is a one-line usage error."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from durable.cli import arguments


@pytest.mark.parametrize(
    ("text", "value"),
    [("7d", 604800.0), ("12h", 43200.0), ("30m", 1800.0), ("45s", 45.0), ("1w", 604800.0),
     ("1.5", 1.5), ("0", 0.0)],
)  # fmt: skip
def test_a_duration_is_a_number_with_a_unit(text: str, value: float) -> None:
    assert arguments.duration(text) == value


@pytest.mark.parametrize("text", ["-1d", "inf", "nan", "1e400s", "x", "d", ""])
def test_a_duration_is_finite_and_not_negative(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a duration \(e.g. 7d"):
        arguments.duration(text)


def test_since_is_a_duration_or_a_time_with_its_offset() -> None:
    assert arguments.since("6h") == 21600.0
    assert arguments.since("2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="nor an ISO time with offset"):
        arguments.since("2030-01-01T00:00:00")


def test_seconds_flags_refuse_what_is_not_a_duration() -> None:
    assert arguments.non_negative_float("0") == 0.0
    assert arguments.positive_float("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a number of seconds > 0: '0'"):
        arguments.positive_float("0")
    for text in ["-1", "inf", "nan", "soon"]:
        with pytest.raises(argparse.ArgumentTypeError, match=r"not a number of seconds >= 0"):
            arguments.non_negative_float(text)


def test_a_choice_flag_takes_one_of_its_choices() -> None:
    policy = arguments.one_of(("cancel", "abandon"))
    assert policy("abandon") == "abandon"
    with pytest.raises(argparse.ArgumentTypeError, match=r"'orphan' is not one of: cancel, "):
        policy("orphan")
