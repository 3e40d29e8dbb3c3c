"""Claim ahead: how many runs a worker claims beyond its free handler slots.

A handler that finishes while a claim is on the wire leaves its slot idle until the claim comes
back. Claiming a few runs ahead hides that round trip when tasks are short; for long tasks it
would only sit on runs another worker could start now, so the figure follows the recent finish
rate and the claim latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Claim ahead enough runs to cover this many claim round trips at the recent finish rate.
CLAIM_AHEAD_ROUND_TRIPS = 2.0


class ClaimAhead:
    """How many runs to claim beyond the free handler slots, so that handlers that finish
    while a claim is on the wire find a run waiting instead of an idle slot.

    The figure is what the recent handler-finish rate frees during a couple of claim round
    trips, capped at ``limit``: up to the cap for short tasks, zero for tasks that take far
    longer than a round trip (a worker never sits on runs another worker could start now).
    ``clock`` (seconds, monotonic) measures the finish rate; tests pass one they can set.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.runs = 0
        self._clock = clock
        self._done = 0
        self._since = clock()
        self._rate = 0.0  # handlers finished per second (smoothed)
        self._latency = 0.0  # seconds per claim round trip (smoothed)

    def handler_done(self) -> None:
        self._done += 1

    def claimed(self, latency: float) -> None:
        """A claim came back after ``latency`` seconds: update the rate and the figure."""
        now = self._clock()
        if (window := now - self._since) > 0:
            self._rate = (self._rate + self._done / window) / 2
            self._done, self._since = 0, now
        self._latency = (self._latency + latency) / 2 if self._latency else latency
        ahead = self._rate * self._latency * CLAIM_AHEAD_ROUND_TRIPS
        self.runs = min(self.limit, int(ahead))
