"""A soak: a steady spawn rate through 4 worker processes for minutes, with retention on.

``make soak`` (not in CI), or ``python bench/soak.py --minutes 10 --rate 200``. Every sample
prints the workers' resident memory, the size of the tables with their indexes, the backlog, and
the number of lapsed leases; the summary compares the first and last samples. It reports; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import asyncpg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

from durable.client import Client

BENCH_DIR = Path(__file__).resolve().parent
WORKERS = 4
RETENTION_S = 60.0
_SIZES = """
select coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'durable' and c.relkind = 'r'
"""
_LAPSED = "select count(*) from durable.runs where state = 'running' and lease_expires_at < now()"
_BACKLOG = "select count(*) from durable.runs where state = 'pending' and available_at <= now()"
_DONE = "select count(*) from durable.tasks where state = 'completed'"
_AUTOVACUUM = "select current_setting('autovacuum')::boolean"
_VACUUM = "vacuum durable.tasks, durable.runs, durable.checkpoints"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _start_workers(dsn: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "DURABLE_DSN": dsn}
    command = [sys.executable, "-m", "durable", "worker", "soak_app:app", "-q", "soak", "-c", "20"]
    return [
        subprocess.Popen(
            [*command, "--claim-timeout", "10"],
            cwd=BENCH_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(WORKERS)
    ]


async def _spawner(client: Client, rate: int, seconds: float, counter: list[int]) -> None:
    """Spawn ``rate`` tasks a second, in ten batches a second, for ``seconds``."""
    per_tick = max(1, rate // 10)
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        base = counter[0]
        await client.spawn_many("soak", [("soak_task", {"i": base + i}) for i in range(per_tick)])
        counter[0] += per_tick
        tick += 1
        await anyio.sleep(max(0.0, start + tick / 10 - time.monotonic()))


async def _soak(args: argparse.Namespace) -> None:
    async with harness.target_server() as server, harness.scratch_database(server.dsn) as dsn:
        print(harness.header(server, await harness.describe_server(server.dsn)))
        print(
            f"soak: {args.minutes} min at {args.rate} tasks/s, {WORKERS} workers, "
            f"retention {RETENTION_S:g} s for completed tasks"
        )
        workers = _start_workers(dsn)
        spawned = [0]
        samples: list[tuple[float, list[float], int, int, int, int]] = []
        try:
            async with Client(dsn) as client, anyio.create_task_group() as tg:
                conn = await asyncpg.connect(dsn)
                autovacuum = await conn.fetchval(_AUTOVACUUM)
                print(
                    f"autovacuum: {'on' if autovacuum else 'off: the soak vacuums after pruning'}"
                )
                tg.start_soon(_spawner, client, args.rate, args.minutes * 60, spawned)
                print(
                    f"{'t_s':>6} {'spawned':>9} {'completed':>9} {'backlog':>8} {'lapsed':>6} "
                    f"{'tables_MB':>9}  worker_RSS_MB"
                )
                start = time.monotonic()
                pruned = 0
                while time.monotonic() - start < args.minutes * 60 + 5:
                    await anyio.sleep(args.sample)
                    elapsed = time.monotonic() - start
                    pruned += await client.prune_tasks(RETENTION_S)
                    if not autovacuum:  # what an operator of such a server must do
                        await conn.execute(_VACUUM)
                    rss = [_rss_mb(w.pid) for w in workers if w.poll() is None]
                    size = await conn.fetchval(_SIZES)
                    lapsed = await conn.fetchval(_LAPSED)
                    backlog = await conn.fetchval(_BACKLOG)
                    done = await conn.fetchval(_DONE) + pruned
                    samples.append((elapsed, rss, size, lapsed, backlog, done))
                    print(
                        f"{elapsed:6.0f} {spawned[0]:9,} {done:9,} {backlog:8,} {lapsed:6} "
                        f"{size / 2**20:9.1f}  {' '.join(f'{r:.0f}' for r in rss)}",
                        flush=True,
                    )
                await conn.close()
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        _summary(samples)


def _summary(samples: list[tuple[float, list[float], int, int, int, int]]) -> None:
    if len(samples) < 2:
        return
    first, last = samples[min(1, len(samples) - 1)], samples[-1]  # skip the warm-up sample
    rss_first, rss_last = sum(first[1]), sum(last[1])
    print(
        f"worker RSS total: {rss_first:.0f} MB -> {rss_last:.0f} MB "
        f"({(rss_last - rss_first) / max(rss_first, 1) * 100:+.1f}%)"
    )
    print(
        f"tables with indexes: {first[2] / 2**20:.1f} MB -> {last[2] / 2**20:.1f} MB, "
        f"max {max(s[2] for s in samples) / 2**20:.1f} MB"
    )
    print(
        f"lapsed leases: max {max(s[3] for s in samples)}, last {last[3]}; "
        f"backlog: max {max(s[4] for s in samples):,}, last {last[4]:,}"
    )


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="tasks spawned per second")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    anyio.run(_soak, parser.parse_args())


if __name__ == "__main__":
    main()
