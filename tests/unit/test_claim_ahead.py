"""The claim-ahead estimate: how many runs a worker claims beyond its free slots.

The figure is what the recent finish rate frees during two claim round trips, capped at the
limit: the limit for short tasks, zero for tasks far longer than a claim, and it follows the
finish rate and the claim latency as they change. Each test sets the clock itself; the numbers
are powers of two so that the expected figures are exact.
"""

from __future__ import annotations

import pytest

from durable.runtime.claim_ahead import CLAIM_AHEAD_ROUND_TRIPS, ClaimAhead


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def claim_round(
    ahead: ClaimAhead, clock: Clock, *, window: float, done: int, latency: float
) -> int:
    """``done`` handlers finish during ``window`` seconds, then a claim comes back after
    ``latency`` seconds; the new figure."""
    clock.now += window
    for _ in range(done):
        ahead.handler_done()
    ahead.claimed(latency)
    return ahead.runs


def test_nothing_is_claimed_ahead_before_a_handler_finished() -> None:
    clock = Clock()
    ahead = ClaimAhead(limit=8, clock=clock)
    assert ahead.runs == 0
    assert claim_round(ahead, clock, window=1.0, done=0, latency=0.25) == 0
    assert claim_round(ahead, clock, window=1.0, done=0, latency=0.25) == 0


def test_the_figure_is_the_finish_rate_over_two_round_trips() -> None:
    assert CLAIM_AHEAD_ROUND_TRIPS == 2.0
    clock = Clock()
    ahead = ClaimAhead(limit=1000, clock=clock)
    # 64 handlers in 0.5 s: 128/s, smoothed from 0 to 64/s; 64/s x 0.25 s x 2 round trips
    assert claim_round(ahead, clock, window=0.5, done=64, latency=0.25) == 32
    # the rate moves half way to the new window's (96/s); the latency is unchanged
    assert claim_round(ahead, clock, window=0.5, done=64, latency=0.25) == 48
    # the latency is smoothed too: (0.25 + 0.75) / 2 = 0.5 s; the rate goes to 112/s
    assert claim_round(ahead, clock, window=0.5, done=64, latency=0.75) == 112


def test_short_tasks_are_claimed_ahead_up_to_the_limit() -> None:
    clock = Clock()
    ahead = ClaimAhead(limit=8, clock=clock)
    # 1 ms tasks: 4,000 finished per second, claims of 4 ms
    figures = [claim_round(ahead, clock, window=0.01, done=40, latency=0.004) for _ in range(5)]
    assert figures == [8] * 5


def test_tasks_far_longer_than_a_claim_are_not_claimed_ahead() -> None:
    clock = Clock()
    ahead = ClaimAhead(limit=8, clock=clock)
    # 30 s tasks: one finishes per round of 30 s; a claim takes 5 ms
    figures = [claim_round(ahead, clock, window=30.0, done=1, latency=0.005) for _ in range(20)]
    assert figures == [0] * 20


def test_the_figure_falls_to_zero_when_tasks_become_long() -> None:
    clock = Clock()
    ahead = ClaimAhead(limit=8, clock=clock)
    for _ in range(5):
        claim_round(ahead, clock, window=0.01, done=40, latency=0.004)
    assert ahead.runs == 8
    # now one handler in 5 s: the smoothed rate halves per claim, and so does the figure
    figures = [claim_round(ahead, clock, window=5.0, done=1, latency=0.004) for _ in range(8)]
    assert figures == sorted(figures, reverse=True)
    assert figures[0] == 8  # a step down is gradual: the old rate still counts half
    assert figures[-1] == 0
    # and rises again when the tasks are short again
    assert claim_round(ahead, clock, window=0.01, done=40, latency=0.004) == 8


@pytest.mark.parametrize("limit", [1, 4, 20])
def test_the_limit_caps_the_figure(limit: int) -> None:
    clock = Clock()
    ahead = ClaimAhead(limit=limit, clock=clock)
    # 1,024 finished per 1/8 s, claims of 1/8 s: uncapped, the figure would be in the hundreds
    figures = [claim_round(ahead, clock, window=0.125, done=1024, latency=0.125) for _ in range(4)]
    assert figures == [limit] * 4


def test_a_slower_claim_round_trip_claims_more_ahead_and_a_faster_one_less() -> None:
    clock = Clock()
    ahead = ClaimAhead(limit=1000, clock=clock)
    # a steady 1,024 finished per second
    fast = [claim_round(ahead, clock, window=0.125, done=128, latency=0.001) for _ in range(12)]
    assert fast[-1] == 2  # 1,024/s x 1 ms x 2, the rate close to its steady value
    slow = [claim_round(ahead, clock, window=0.125, done=128, latency=0.020) for _ in range(12)]
    assert slow == sorted(slow)
    assert fast[-1] < slow[0] < slow[-1] <= 40  # 1,024/s x 20 ms x 2 at most
    assert slow[-1] >= 38
    back = [claim_round(ahead, clock, window=0.125, done=128, latency=0.001) for _ in range(12)]
    assert back == sorted(back, reverse=True)
    assert back[-1] == 2


def test_handlers_finished_while_the_clock_stood_still_count_in_the_next_window() -> None:
    clock = Clock()
    ahead = ClaimAhead(limit=1000, clock=clock)
    # no time passed since the estimate started: no rate can be measured yet
    assert claim_round(ahead, clock, window=0.0, done=32, latency=0.5) == 0
    # the 32 handlers are counted with the next window's 32: 64 in 0.5 s, 128/s, smoothed to 64/s
    assert claim_round(ahead, clock, window=0.5, done=32, latency=0.5) == 64
