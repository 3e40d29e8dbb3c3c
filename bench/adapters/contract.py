"""The contract between ``bench/peers.py`` and one system's adapter script (stdlib only).

Every adapter (``durable_bench.py``, ``pgqueuer_bench.py``, ...) runs in its own virtual
environment as ``python bench/adapters/<system>_bench.py WORKLOAD --dsn DSN [--n N]
[--concurrency C] [--batch B] [--backlog M] [--processes P]``. It gets a fresh, empty database
of its own (it installs its system's schema there itself), runs one workload once, and prints one
line ``RESULT {json}`` as the last line of stdout:

- throughput workloads: ``{"value": tasks_per_second, "unit": "tasks/s", ...}``
- ``latency``: ``{"value": p50_ms, "unit": "ms", "p50_ms": ..., "p99_ms": ..., ...}``
- a workload the system cannot do: ``{"skip": "why, in a few words"}``

Extra keys are free-form figures for the README (``"duplicates"``, ``"seconds"``, ...).

Workloads (N = ``--n``, default 20,000; C = ``--concurrency``, default 50):

- ``enqueue_one``: N tasks enqueued one at a time, each call awaited before the next.
- ``enqueue_batch``: N tasks through the system's batched enqueue, ``--batch`` per call.
- ``noop``: N no-op tasks enqueued first (batched, untimed); then one worker in this process at
  concurrency C; the clock runs from starting the worker until the N-th handler has returned.
- ``steps3``: as ``noop`` but each task checkpoints three durable steps (skip if the system has
  no durable steps).
- ``latency``: a worker at concurrency C idles on an empty queue; 1,000 tasks are enqueued one at
  a time, the next only after the previous one started plus a 5 ms pause (low load); spawn-to-
  start is ``perf_counter()`` in the handler minus ``perf_counter()`` just before the enqueue call.
- ``backlog``: ``--backlog`` (default 1,000,000) tasks enqueued first (batched, untimed); then as
  ``noop``, timing the first N handlers only.
- ``scale``: N tasks enqueued first; ``--processes`` (default 4) worker processes at concurrency
  C each; the clock runs until N handlers returned across them. Reports ``"duplicates"``: how
  many task executions beyond one per task were seen (must be 0). The adapter starts its worker
  processes as ``python <itself> worker --dsn DSN --out FILE ...``: a worker that connects,
  touches ``FILE.ready``, waits for a line on stdin ("go"), then runs until terminated and
  appends each executed task's number (its ``i`` param) to ``FILE``, one per line. The clock
  starts when every process is ready and told to go.

After any untimed preload, an adapter runs ``ANALYZE`` (untimed): what autovacuum would have done
by then on a server that has it on (the local test server has it off).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

WORKLOADS = ("enqueue_one", "enqueue_batch", "noop", "steps3", "latency", "backlog", "scale")
INTERNAL = ("worker",)  # the worker processes of ``scale``
LATENCY_TASKS = 1_000
LATENCY_PAUSE_S = 0.005


def parse_args(
    argv: Sequence[str] | None = None, extra: tuple[str, ...] = ()
) -> argparse.Namespace:
    """The command line; ``extra`` names workloads of one system's own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=WORKLOADS + INTERNAL + extra)
    parser.add_argument("--dsn", required=True, help="a fresh, empty database of this run's own")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--out", help="worker: the file that receives executed task numbers")
    return parser.parse_args(argv)


def report(**fields: Any) -> None:
    """Print the one ``RESULT`` line the orchestrator reads."""
    sys.stdout.flush()
    print("RESULT " + json.dumps(fields), flush=True)


def throughput(n: int, seconds: float, **extra: Any) -> None:
    report(value=n / seconds, unit="tasks/s", n=n, seconds=round(seconds, 4), **extra)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(samples_s: Sequence[float], **extra: Any) -> None:
    p50 = percentile(samples_s, 50) * 1000
    p99 = percentile(samples_s, 99) * 1000
    report(
        value=p50, unit="ms", p50_ms=round(p50, 3), p99_ms=round(p99, 3), n=len(samples_s), **extra
    )


def skip(reason: str) -> None:
    report(skip=reason)


now = time.perf_counter
