"""Retry strategies: validation, the JSON they are stored as, and the bounds of their delays."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from durable.protocol.durations import seconds
from durable.protocol.retry import (
    DEFAULT_RETRY,
    Exponential,
    Fixed,
    delay_bounds,
    retry_from_json,
)


def test_fixed_waits_the_same_every_time() -> None:
    retry = Fixed(2.5)
    assert [delay_bounds(retry, n) for n in (1, 2, 10)] == [(2.5, 2.5)] * 3


def test_fixed_takes_a_timedelta() -> None:
    assert Fixed(timedelta(minutes=1)).seconds == 60.0


@pytest.mark.parametrize("value", [-1.0, timedelta(seconds=-1), math.nan])
def test_fixed_refuses_a_negative_or_nan_duration(value: float | timedelta) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Fixed(value)


def test_exponential_grows_by_factor_from_base() -> None:
    retry = Exponential(base=1.0, factor=2.0, max=300.0, jitter=0.0)
    assert [delay_bounds(retry, n)[0] for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_exponential_is_capped_at_max() -> None:
    retry = Exponential(base=1.0, factor=2.0, max=10.0, jitter=0.0)
    assert delay_bounds(retry, 5) == (10.0, 10.0)
    assert delay_bounds(retry, 60) == (10.0, 10.0)


def test_jitter_spreads_around_the_delay_but_never_above_max() -> None:
    retry = Exponential(base=4.0, factor=2.0, max=10.0, jitter=0.25)
    assert delay_bounds(retry, 1) == (3.0, 5.0)
    assert delay_bounds(retry, 2) == (6.0, 10.0)  # 8 * 1.25 = 10
    assert delay_bounds(retry, 3) == (7.5, 10.0)  # d = 10 (capped): 7.5 .. min(10, 12.5)


def test_a_factor_of_one_is_constant() -> None:
    retry = Exponential(base=3.0, factor=1.0, max=60.0, jitter=0.0)
    assert delay_bounds(retry, 1) == delay_bounds(retry, 40) == (3.0, 3.0)


def test_a_base_of_zero_retries_at_once() -> None:
    assert delay_bounds(Exponential(base=0.0, jitter=1.0), 7) == (0.0, 0.0)


def test_the_default_is_exponential_from_one_second() -> None:
    assert delay_bounds(DEFAULT_RETRY, 1) == pytest.approx((0.9, 1.1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1.0},
        {"factor": 0.5},
        {"max": -1.0},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_exponential_refuses_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Exponential"):
        Exponential(**kwargs)


@pytest.mark.parametrize(
    "retry",
    [Fixed(3.0), Exponential(), Exponential(base=0.5, factor=3.0, max=40.0, jitter=0.5)],
    ids=str,
)
def test_a_strategy_round_trips_through_json(retry: Fixed | Exponential) -> None:
    assert retry_from_json(retry.to_json()) == retry


def test_no_stored_strategy_means_the_default() -> None:
    assert retry_from_json(None) is DEFAULT_RETRY
    assert retry_from_json({}) is DEFAULT_RETRY


def test_strategies_are_frozen() -> None:
    retry = Exponential()
    with pytest.raises(AttributeError):
        retry.base = 2.0  # type: ignore[misc]


def test_seconds_normalises_durations() -> None:
    assert seconds(None, what="x") is None
    assert seconds(1, what="x") == 1.0
    assert seconds(timedelta(milliseconds=1500), what="x") == 1.5
    with pytest.raises(ValueError, match="delay must be a non-negative duration"):
        seconds(-0.001, what="delay")


def test_a_huge_attempt_is_capped_at_max_without_overflow() -> None:
    retry = Exponential(base=1.0, factor=2.0, max=300.0, jitter=0.0)
    assert delay_bounds(retry, 2_000) == (300.0, 300.0)
