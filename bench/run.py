"""Print durable's throughput figures (tasks/s). ``make bench``, or ``python bench/run.py --help``.

Runs against ``$DURABLE_DSN`` if set, else the embedded server, always in a scratch database
``durable_bench_<hex>`` created for the run and dropped afterwards. It reports; it asserts
nothing about speed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio
import structlog

# bench/ is a directory of scripts, not a package: its modules import each other by bare name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import pool
import protocol

# Add a module's workloads here; each runs on its own fresh queues in the same scratch database.
WORKLOADS: list[harness.Workload] = [*protocol.WORKLOADS, *pool.WORKLOADS]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=_positive, default=10_000, help="tasks per workload")
    parser.add_argument("--batch", type=_positive, default=1_000, help="spawn_many batch size")
    parser.add_argument(
        "--consumers", type=_positive, default=8, help="concurrent claim loops (claim workload)"
    )
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    async with harness.target_server() as server:
        print(harness.header(server, await harness.describe_server(server.dsn)), flush=True)
        async with harness.scratch_database(server.dsn) as dsn:
            bench = harness.Bench(dsn=dsn, n=args.n, batch=args.batch, consumers=args.consumers)
            measurements = [await workload(bench) for workload in WORKLOADS]
    print(harness.table(measurements))


def main(argv: list[str] | None = None) -> None:
    # The library logs through structlog and never configures it; this script keeps only warnings.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    args = _parse_args(argv)
    try:
        anyio.run(_main, args)
    except KeyboardInterrupt:  # the scratch database is already dropped (shielded cleanup)
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
