"""A soak: a steady spawn rate through worker processes for minutes, with retention on.

``make soak`` (not in CI) runs 10 minutes at 200 tasks/s; the long form of issue 21 is
``make soak SOAK_MINUTES=30 SOAK_RATE=2000 SOAK_RETENTION=300``, or ``python bench/soak.py
--minutes 30 --rate 2000 --workers 4 --retention 300``. The workers prune completed tasks older
than ``--retention`` seconds themselves (``Durable(retention=...)``), as a deployment's do.

Every sample prints the tasks spawned and ended, the backlog, lapsed leases, the size of each hot
table with its indexes (tasks, runs, checkpoints) and every worker's resident memory; every
``--window`` seconds (default 5 minutes) a line gives the window's throughput and how much the
workers' resident memory grew in it (memory that settles grows less each window; a leak does not:
``bench/worker_memory.py`` tells the Python heap from what the allocator keeps). The summary
compares the first and the last window: throughput, table sizes, worker memory. It reports; it
asserts nothing.

The workers keep the hot tables small themselves (schema 23, hot and cold: they move finished
tasks to the history tables and vacuum the hot tables when their role owns them), so by default
(``--vacuum never``) the soak runs no ``VACUUM`` of its own. ``--vacuum auto`` runs one on the hot
tables after each sample when the server's autovacuum is off, as an operator must where the
workers' role does not own the tables. The history column sums the three history tables.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from durable.client import Client

BENCH_DIR = Path(__file__).resolve().parent
HOT_TABLES = ("tasks", "runs", "checkpoints")
_SIZES = """
select c.relname, pg_total_relation_size(c.oid)::bigint as bytes
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'durable' and c.relname = any($1::text[])
"""
_LAPSED = "select count(*) from durable.runs where state = 'running' and lease_expires_at < now()"
_BACKLOG = "select count(*) from durable.runs where state = 'pending' and available_at <= now()"
_LIVE = "select count(*) from durable.tasks where state = 'pending'"
_AUTOVACUUM = "select current_setting('autovacuum')::boolean"
_VACUUM = "vacuum durable.tasks, durable.runs, durable.checkpoints"
_HISTORY = """
select coalesce(sum(pg_total_relation_size(p.relid)), 0)::bigint
  from unnest(array['durable.tasks_history', 'durable.runs_history',
                    'durable.checkpoints_history']::regclass[]) as h(rel),
       pg_partition_tree(h.rel) p
"""


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    spawned: int
    ended: int  # spawned and no longer live: completed (the soak's tasks do not fail)
    backlog: int
    lapsed: int
    tables: dict[str, int]  # bytes with indexes, per hot table
    rss_mb: list[float]


def rss_mb(pid: int) -> float:
    """Process ``pid``'s resident memory, MB (Linux's /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start_workers(dsn: str, args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "DURABLE_DSN": dsn,
        "DURABLE_SOAK_RETENTION_S": str(args.retention),
        "DURABLE_SOAK_RETENTION_INTERVAL_S": str(args.retention_interval),
    }
    command = [sys.executable, "-m", "durable", "worker", "soak_app:app", "-q", "soak"]
    return [
        subprocess.Popen(
            [*command, "-c", str(args.concurrency), "--claim-timeout", "10"],
            cwd=BENCH_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(args.workers)
    ]


async def spawn_at_rate(client: Client, rate: int, seconds: float, counter: list[int]) -> None:
    """Spawn ``rate`` soak tasks a second, in ten batches a second, for ``seconds``;
    ``counter[0]`` counts them."""
    per_tick = max(1, rate // 10)
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        base = counter[0]
        await client.spawn_many("soak", [("soak_task", {"i": base + i}) for i in range(per_tick)])
        counter[0] += per_tick
        tick += 1
        await anyio.sleep(max(0.0, start + tick / 10 - time.monotonic()))


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f}"


async def _soak(args: argparse.Namespace) -> None:
    async with harness.target_server() as server, harness.scratch_database(server.dsn) as dsn:
        print(harness.header(server, await harness.describe_server(server.dsn)))
        print(
            f"soak: {args.minutes:g} min at {args.rate:,} tasks/s, {args.workers} workers x "
            f"c={args.concurrency}, completed tasks kept {args.retention:g} s "
            f"(the workers prune every {args.retention_interval:g} s)"
        )
        workers = _start_workers(dsn, args)
        spawned = [0]
        samples: list[Sample] = []
        try:
            async with Client(dsn) as client, anyio.create_task_group() as tg:
                conn = await asyncpg.connect(dsn)
                autovacuum = await conn.fetchval(_AUTOVACUUM)
                vacuum = args.vacuum == "auto" and not autovacuum
                print(
                    f"autovacuum: {'on' if autovacuum else 'off'}; "
                    + ("the soak vacuums the hot tables after each sample" if vacuum else "")
                    + ("no VACUUM is run" if not vacuum and not autovacuum else "")
                )
                tg.start_soon(spawn_at_rate, client, args.rate, args.minutes * 60, spawned)
                print(
                    f"{'t_s':>6} {'spawned':>10} {'ended':>10} {'backlog':>8} {'lapsed':>6} "
                    + " ".join(f"{t + '_MB':>14}" for t in (*HOT_TABLES, "history"))
                    + "  worker_RSS_MB"
                )
                start = time.monotonic()
                next_window = args.window
                window_start = (0.0, 0, 0.0)  # seconds, tasks ended, worker RSS MB
                while time.monotonic() - start < args.minutes * 60 + 5:
                    await anyio.sleep(args.sample)
                    elapsed = time.monotonic() - start
                    if vacuum:
                        await conn.execute(_VACUUM)
                    sizes = {r["relname"]: r["bytes"] for r in await conn.fetch(_SIZES, HOT_TABLES)}
                    sizes["history"] = await conn.fetchval(_HISTORY)
                    sample = Sample(
                        t_s=elapsed,
                        spawned=spawned[0],
                        ended=spawned[0] - await conn.fetchval(_LIVE),
                        backlog=await conn.fetchval(_BACKLOG),
                        lapsed=await conn.fetchval(_LAPSED),
                        tables=sizes,
                        rss_mb=[rss_mb(w.pid) for w in workers if w.poll() is None],
                    )
                    samples.append(sample)
                    print(
                        f"{elapsed:6.0f} {sample.spawned:10,} {sample.ended:10,} "
                        f"{sample.backlog:8,} {sample.lapsed:6} "
                        + " ".join(f"{_mb(sizes.get(t, 0)):>14}" for t in (*HOT_TABLES, "history"))
                        + f"  {' '.join(f'{r:.0f}' for r in sample.rss_mb)}",
                        flush=True,
                    )
                    if elapsed >= next_window:
                        seconds = elapsed - window_start[0]
                        rate = (sample.ended - window_start[1]) / seconds
                        rss = sum(sample.rss_mb)
                        rss_before = window_start[2] or sum(samples[0].rss_mb)  # first: 1st sample
                        print(
                            f"-- window {window_start[0]:.0f}-{elapsed:.0f} s: "
                            f"{rate:,.0f} tasks/s ended; worker RSS total {rss:.0f} MB "
                            f"({rss - rss_before:+.1f} MB in the window)",
                            flush=True,
                        )
                        window_start = (elapsed, sample.ended, rss)
                        next_window += args.window
                await conn.close()
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        _summary(samples, args.window)


def _window_rate(samples: list[Sample], start_s: float, end_s: float) -> float | None:
    """Tasks ended per second between the samples nearest ``start_s`` and ``end_s``."""
    first = min(samples, key=lambda s: abs(s.t_s - start_s))
    last = min(samples, key=lambda s: abs(s.t_s - end_s))
    if last.t_s <= first.t_s:
        return None
    return (last.ended - first.ended) / (last.t_s - first.t_s)


def _change(first: float, last: float) -> str:
    return f"{(last - first) / max(first, 1e-9) * 100:+.1f}%"


def _summary(samples: list[Sample], window_s: float) -> None:
    if len(samples) < 3:
        return
    # the first and the last window of the run (the spawner stops at the end: the last sample
    # after it is left out)
    end = samples[-2].t_s
    window = min(window_s, end / 2)
    first_rate = _window_rate(samples, 0.0, window)
    last_rate = _window_rate(samples, end - window, end)
    if first_rate and last_rate:
        print(
            f"throughput, first {window:.0f} s: {first_rate:,.0f} tasks/s; last {window:.0f} s: "
            f"{last_rate:,.0f} tasks/s ({_change(first_rate, last_rate)})"
        )
    first = min(samples, key=lambda s: abs(s.t_s - window))  # after the warm-up
    last = samples[-2]
    for table in (*HOT_TABLES, "history"):
        before, after = first.tables.get(table, 0), last.tables.get(table, 0)
        print(
            f"{table} with indexes: {_mb(before)} MB at {first.t_s:.0f} s -> {_mb(after)} MB "
            f"at {last.t_s:.0f} s ({_change(before, after)}), "
            f"max {_mb(max(s.tables.get(table, 0) for s in samples))} MB"
        )
    rss_first, rss_last = sum(first.rss_mb), sum(last.rss_mb)
    print(
        f"worker RSS total: {rss_first:.0f} MB at {first.t_s:.0f} s -> {rss_last:.0f} MB "
        f"at {last.t_s:.0f} s ({_change(rss_first, rss_last)})"
    )
    print(
        f"lapsed leases: max {max(s.lapsed for s in samples)}, last {last.lapsed}; "
        f"backlog: max {max(s.backlog for s in samples):,}, last {last.backlog:,}"
    )


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="tasks spawned per second")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=20, help="slots per worker")
    parser.add_argument(
        "--retention", type=float, default=60.0, help="seconds completed tasks are kept"
    )
    parser.add_argument(
        "--retention-interval", type=float, default=30.0, help="seconds between the workers' prunes"
    )
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--window", type=float, default=300.0, help="seconds per throughput line")
    parser.add_argument("--vacuum", choices=("auto", "never"), default="never")
    args = parser.parse_args()
    if args.rate < 1 or args.workers < 1 or args.concurrency < 1 or args.sample <= 0:
        parser.error("--rate, --workers, --concurrency and --sample must be positive")
    anyio.run(_soak, args)


if __name__ == "__main__":
    main()
