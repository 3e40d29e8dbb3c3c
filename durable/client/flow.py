"""Flow over time: the per-minute rows of :meth:`Client.flow` as chart series, with percentiles
read from their histograms.

A histogram is ``{bucket: count}``; bucket ``b`` holds durations from ``2**(b/2)`` to
``2**((b+1)/2)`` milliseconds (SQL's ``durable.flow_bucket``: bucket 0 also holds less than a
millisecond), so a percentile is known to within a factor of sqrt(2): it is reported as the
bucket's geometric middle. Histograms add up, so any step of whole minutes and any set of queues
has its exact percentiles of the bucketed values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from durable.protocol.records import FlowMinute, ReasonClass

#: The percentiles each series of durations gets.
PERCENTILES = (50, 95, 99)


def bucket_middle_s(bucket: int) -> float:
    """The geometric middle of a bucket, in seconds."""
    return float(2 ** ((bucket + 0.5) / 2) / 1000)


def percentile(histogram: Mapping[int, int], pct: float) -> float | None:
    """The ``pct``-th percentile (0 to 100) of a histogram, in seconds; None when it is empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(total * pct / 100))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket_middle_s(bucket)
    return bucket_middle_s(max(histogram))


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSeries:
    """Series over ``times`` (the start of each step of ``step_s`` seconds, oldest first): runs
    completed, failed and dead per queue, failed runs per reason class, and the percentiles of
    start lag and run time (seconds, None where no run) of all queues together. ``totals`` sums
    each count over the window."""

    step_s: int
    times: list[datetime]
    completed: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, list[int]] = field(default_factory=dict)
    dead: dict[str, list[int]] = field(default_factory=dict)
    failed_classes: dict[str, list[int]] = field(default_factory=dict)
    lag_s: dict[int, list[float | None]] = field(default_factory=dict)
    run_s: dict[int, list[float | None]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)


def series(
    rows: Iterable[FlowMinute], *, start: datetime, end: datetime, step_s: int = 60
) -> FlowSeries:
    """The rows of ``[start, end)`` in steps of ``step_s`` seconds (a multiple of 60)."""
    if step_s < 60 or step_s % 60:
        raise ValueError("step_s must be a whole number of minutes")
    first = _floor(start, step_s)
    count = max(1, math.ceil((end - first).total_seconds() / step_s))
    times = [first + timedelta(seconds=i * step_s) for i in range(count)]
    completed: dict[str, list[int]] = {}
    failed: dict[str, list[int]] = {}
    dead: dict[str, list[int]] = {}
    classes = {str(rc): [0] * count for rc in ReasonClass}
    lags: list[Counter[int]] = [Counter() for _ in range(count)]
    runs: list[Counter[int]] = [Counter() for _ in range(count)]
    totals: Counter[str] = Counter()
    for row in rows:
        i = int((row.minute - first).total_seconds() // step_s)
        if not 0 <= i < count:
            continue
        for per_queue, value in ((completed, row.completed), (failed, row.failed)):
            per_queue.setdefault(row.queue, [0] * count)[i] += value
        dead.setdefault(row.queue, [0] * count)[i] += row.dead
        for rc, n in row.failed_classes.items():
            classes.setdefault(rc, [0] * count)[i] += n
        lags[i].update(row.lag_ms)
        runs[i].update(row.run_ms)
        totals.update(
            completed=row.completed, failed=row.failed, dead=row.dead, cancelled=row.cancelled
        )
    return FlowSeries(
        step_s=step_s,
        times=times,
        completed=dict(sorted(completed.items())),
        failed=dict(sorted(failed.items())),
        dead=dict(sorted(dead.items())),
        failed_classes=classes,
        lag_s=_percentiles(lags),
        run_s=_percentiles(runs),
        totals={key: totals[key] for key in ("completed", "failed", "dead", "cancelled")},
    )


def _percentiles(histograms: Sequence[Mapping[int, int]]) -> dict[int, list[float | None]]:
    return {pct: [percentile(h, pct) for h in histograms] for pct in PERCENTILES}


def _floor(at: datetime, step_s: int) -> datetime:
    seconds = at.timestamp()
    return datetime.fromtimestamp(seconds - seconds % step_s, tz=at.tzinfo)
