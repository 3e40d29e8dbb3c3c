"""Where a worker's memory goes: one worker in this process, the soak's task spawned by a child.

``python -X tracemalloc bench/worker_memory.py --minutes 10 --rate 400`` runs the soak's app
(``soak_app``, retention 300 s) in this process, against a scratch database of ``$DURABLE_DSN``
(else the embedded server), while a child process spawns ``--rate`` tasks a second. Every
``--sample`` seconds it prints the resident memory, the Python heap that tracemalloc traces (with
``-X tracemalloc``), glibc malloc's bytes in use and free (``mallinfo2``) and the objects the
garbage collector tracks. A structure that grows with the runs handled shows in the traced heap
and the object count; memory the allocator keeps (freed, not handed back) shows as malloc's free
bytes, and ``--trim`` ends with ``malloc_trim(0)`` to show how much of the RSS that is. With
tracemalloc, the end lists the lines whose memory changed most from the second sample to the last;
its own tables and snapshots then count in the RSS and malloc columns, so read those from a run
without ``-X tracemalloc``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import anyio
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import soak

from durable.client import Client

MB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    """glibc with ``mallinfo2`` (2.33+); None elsewhere (the malloc columns are left out)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


def _rss_mb() -> float:
    return soak.rss_mb(os.getpid())


def _sample(start: float, libc: ctypes.CDLL | None) -> str:
    gc.collect()
    parts = [f"{time.monotonic() - start:6.0f}", f"{_rss_mb():7.1f}"]
    if tracemalloc.is_tracing():
        parts.append(f"{tracemalloc.get_traced_memory()[0] / MB:9.2f}")
    if libc is not None:
        info = libc.mallinfo2()
        parts += [f"{info.uordblks / MB:8.1f}", f"{info.fordblks / MB:8.1f}"]
    parts.append(f"{len(gc.get_objects()):10,}")
    return " ".join(parts)


def _spawn_main(dsn: str, rate: int, seconds: float) -> None:
    """The child: spawn ``rate`` soak tasks a second, as the soak does, for ``seconds``."""

    async def spawn() -> None:
        async with Client(dsn) as client:
            await soak.spawn_at_rate(client, rate, seconds, [0])

    anyio.run(spawn)


def _start_producer(dsn: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    rate, minutes = str(args.rate), str(args.minutes)
    return subprocess.Popen(
        [sys.executable, __file__, "--spawn", dsn, "--rate", rate, "--minutes", minutes]
    )


async def _measure(args: argparse.Namespace) -> None:
    libc = _libc()
    async with harness.target_server() as server, harness.scratch_database(server.dsn) as dsn:
        os.environ["DURABLE_DSN"] = dsn  # read when soak_app constructs its Durable
        os.environ.setdefault("DURABLE_SOAK_RETENTION_S", "300")
        app = importlib.import_module("soak_app").app
        seconds = args.minutes * 60
        print(
            f"one worker (c={args.concurrency}) in this process, {args.rate:,} tasks/s for "
            f"{args.minutes:g} min; tracemalloc {'on' if tracemalloc.is_tracing() else 'off'}"
        )
        print(
            f"{'t_s':>6} {'RSS_MB':>7}"
            + (f" {'traced_MB':>9}" if tracemalloc.is_tracing() else "")
            + (f" {'malloc_used_MB':>8} {'malloc_free_MB':>8}" if libc is not None else "")
            + f" {'gc_objects':>10}"
        )
        producer = _start_producer(dsn, args)
        snapshots: list[tracemalloc.Snapshot] = []  # the second sample's and the last one's
        try:
            async with app, anyio.create_task_group() as tg:
                await tg.start(
                    lambda task_status: app.run_worker(
                        ["soak"],
                        concurrency=args.concurrency,
                        claim_timeout=10.0,
                        handle_signals=False,
                        task_status=task_status,
                    )
                )
                start = time.monotonic()
                samples = 0
                while time.monotonic() - start < seconds:
                    await anyio.sleep(args.sample)
                    print(_sample(start, libc), flush=True)
                    samples += 1
                    if tracemalloc.is_tracing() and samples >= 2:
                        snapshots[1 if samples > 2 else 0 :] = [tracemalloc.take_snapshot()]
                if args.trim and libc is not None:
                    before = _rss_mb()
                    libc.malloc_trim(0)
                    print(f"malloc_trim(0): RSS {before:.1f} -> {_rss_mb():.1f} MB")
                tg.cancel_scope.cancel()
        finally:
            producer.wait()
    if len(snapshots) == 2:
        print("tracemalloc, the lines that changed most from the second sample to the last:")
        for stat in snapshots[1].compare_to(snapshots[0], "lineno")[:10]:
            print(f"  {stat}")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=400, help="tasks spawned per second")
    parser.add_argument("--concurrency", type=int, default=20, help="the worker's slots")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--trim", action="store_true", help="end with malloc_trim(0)")
    parser.add_argument("--spawn", metavar="DSN", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.spawn:
        _spawn_main(args.spawn, args.rate, args.minutes * 60)
        return
    if args.rate < 1 or args.concurrency < 1 or args.sample <= 0:
        parser.error("--rate, --concurrency and --sample must be positive")
    anyio.run(_measure, args)


if __name__ == "__main__":
    main()
