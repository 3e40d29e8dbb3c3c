"""Throughput against history: the same workloads with 0, 1M, 10M finished tasks in the tables.

``python bench/history.py --sizes 0,1000000,10000000``. Each cell (a history size under a vacuum
mode) gets a fresh database on a private PostgreSQL cluster that this script starts (``initdb`` to
a temporary directory with the machine's PostgreSQL binaries, its own port, the server defaults
otherwise), so the shared server's configuration is never touched:

- ``off``: autovacuum off (as the machine's shared server runs) and no VACUUM ever run;
- ``vacuumed``: autovacuum off, and one ``VACUUM ANALYZE`` of tasks and runs once the history is
  made: the finished rows without their dead versions, to tell the two apart;
- ``on``: autovacuum on, at PostgreSQL's defaults. Once the history is made the bench waits
  (``--settle-s``) until autovacuum has been through tasks and runs: a service whose autovacuum
  keeps up, measured just after a pass (at the defaults a table is vacuumed again only when its
  dead row versions reach 20% of its rows: 2,000,000 for 10,000,000 tasks).

The history is made with set-based SQL in the shape the protocol leaves it: every task inserted
as spawn_many inserts it, its run claimed (``running``), then run and task completed, each phase a
statement of its own per chunk, so the tables carry the dead row versions and index entries that
the same work done through the protocol leaves behind. Its runs ended in the past, one per
millisecond, up to ten minutes ago. After each chunk the workers' upkeep runs as it would
(durable/runtime/history.py): ``durable.move_to_history`` moves the chunk's finished tasks to the
history tables (their day partitions made first by ``durable.ensure_history_partitions``), and
the hot tables are vacuumed (``VACUUM (SKIP_LOCKED)`` of runs, tasks, checkpoints: the bench's
role owns them, as a worker migrating with the schema's owner does). Then, in the cell's
database:

- the no-op drain: ``bench/adapters/durable_bench.py noop`` (N tasks spawned, one in-process
  worker at C slots drains them), as ``bench/run.py`` measures it;
- ``result()`` of a finished task: a random finished task's ``Client.result`` (history's when
  there is history), one at a time;
- spawn one at a time and batched: the adapter's ``enqueue_one`` and ``enqueue_batch``.

Every figure is printed with its ratio to the empty database's under the same vacuum mode. It
reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import structlog

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # bench/ is scripts, not a package

import harness  # noqa: E402 — after the path above

from durable.client import Client  # noqa: E402 — after the path above

ADAPTER = BENCH / "adapters" / "durable_bench.py"
QUEUE = "bench"  # the adapter's queue: its tasks and the history's share the claim index
CHUNK = 250_000  # history rows per statement
PG_USER = "postgres"  # PostgreSQL refuses to run as root

# One chunk of history: ids and times in a helper table, then the protocol's row shapes.
_IDS = """
create unlogged table if not exists public.history_ids (
    g bigint, task_id uuid, run_id uuid, at timestamptz)
"""
_FILL_IDS = """
insert into public.history_ids
select s.g, durable.uuidv7_seq(s.ms, 2 * s.g), durable.uuidv7_seq(s.ms, 2 * s.g + 1), s.at
  from (select g, at, (extract(epoch from at) * 1000)::bigint as ms
          from (select g, $3::timestamptz + g * interval '1 millisecond' as at
                  from generate_series($1::bigint, $2::bigint) g) x) s
"""
_SPAWN_TASKS = """
insert into durable.tasks (task_id, queue, task_name, params, created_at, scheduled_at)
select h.task_id, $1, 'noop', jsonb_build_object('i', h.g), h.at, h.at
  from public.history_ids h order by h.g
"""
_SPAWN_RUNS = """
insert into durable.runs (run_id, task_id, queue, attempt, state, available_at, created_at)
select h.run_id, h.task_id, $1, 1, 'pending', h.at, h.at from public.history_ids h order by h.g
"""
_CLAIM_RUNS = """
update durable.runs r
   set state = 'running', claimed_by = 'history', started_at = h.at,
       lease_s = 60, lease_expires_at = h.at + interval '60 seconds', code_version = 'history'
  from public.history_ids h where r.run_id = h.run_id
"""
_COMPLETE_RUNS = """
update durable.runs r set state = 'completed', finished_at = h.at + interval '1 millisecond'
  from public.history_ids h where r.run_id = h.run_id
"""
_COMPLETE_TASKS = """
update durable.tasks t
   set state = 'completed', result = 'null', finished_at = h.at + interval '1 millisecond'
  from public.history_ids h where t.task_id = h.task_id
"""
_SIZES = """
select c.relname, pg_total_relation_size(c.oid) as bytes, s.n_live_tup, s.n_dead_tup,
       s.autovacuum_count
  from pg_class c join pg_stat_user_tables s on s.relid = c.oid
 where s.schemaname = 'durable' and c.relname in ('tasks', 'runs')
 order by c.relname
"""


# --- the private cluster -------------------------------------------------------------------------


def _bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    if found:
        return str(found[0])
    if on_path := shutil.which(name):
        return on_path
    raise SystemExit(f"{name} not found: install PostgreSQL's server binaries")


def _as_server_user() -> list[str]:
    return ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def private_cluster(port: int, *, autovacuum: bool) -> Iterator[str]:
    """A PostgreSQL cluster of our own on ``port`` (127.0.0.1, trust), stopped and deleted after."""
    home = Path(tempfile.mkdtemp(prefix="durable-history-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(PG_USER)
        os.chown(home, user.pw_uid, user.pw_gid)
    data = home / "data"
    run = {"check": True, "cwd": "/", "stdout": subprocess.DEVNULL}
    try:
        subprocess.run(
            [
                *_as_server_user(),
                _bin("initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
            ],
            **run,  # type: ignore[call-overload]
        )
        options = (
            f"-p {port} -h 127.0.0.1 -k {home} -c max_connections=200"
            f" -c autovacuum={'on' if autovacuum else 'off'}"
        )
        subprocess.run(
            [
                *_as_server_user(),
                _bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(home / "postgres.log"),
                "-w",
                "-o",
                options,
                "start",
            ],
            **run,  # type: ignore[call-overload]
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*_as_server_user(), _bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                check=False,
                cwd="/",
                stdout=subprocess.DEVNULL,
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- making history ------------------------------------------------------------------------------


MOVE_BATCH = 50_000  # tasks per move_to_history call while the history is made


async def keep_history(conn: asyncpg.Connection) -> None:
    """What the workers' upkeep does after tasks end: move them to history, vacuum the hot
    tables."""
    while await conn.fetchval("select durable.move_to_history($1)", MOVE_BATCH) == MOVE_BATCH:
        pass
    await conn.execute("vacuum (skip_locked) durable.runs, durable.tasks, durable.checkpoints")


async def make_history(dsn: str, size: int) -> float:
    """``size`` completed tasks with their runs, ended before now and moved to history; the
    seconds it took."""
    if size == 0:
        return 0.0
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        first_at: datetime = await conn.fetchval(
            "select now() - interval '10 minutes' - $1 * interval '1 millisecond'", size
        )
        await conn.execute(_IDS)
        for low in range(0, size, CHUNK):
            high = min(size, low + CHUNK) - 1
            await conn.execute("truncate public.history_ids")
            await conn.execute(_FILL_IDS, low, high, first_at)
            await conn.execute(_SPAWN_TASKS, QUEUE)
            await conn.execute(_SPAWN_RUNS, QUEUE)
            await conn.execute(_CLAIM_RUNS)
            await conn.execute(_COMPLETE_RUNS)
            await conn.execute(_COMPLETE_TASKS)
            if low == 0:
                await conn.execute("select durable.ensure_history_partitions(3)")
            await keep_history(conn)
        await conn.execute("drop table public.history_ids")
        await conn.execute("analyze")  # as the adapter's preload does; a planner that knows
    finally:
        await conn.close()
    return time.perf_counter() - started


async def autovacuum_on(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        on: bool = await conn.fetchval("select current_setting('autovacuum')::boolean")
    finally:
        await conn.close()
    return on


_VACUUMED = """
select count(*) filter (where s.autovacuum_count > 0) = 2
       and not exists (select 1 from pg_stat_progress_vacuum p where p.datname = current_database())
  from pg_stat_user_tables s
 where s.schemaname = 'durable' and s.relname in ('tasks', 'runs')
"""


async def settle(dsn: str, limit_s: float) -> float:
    """Wait until autovacuum has been through tasks and runs once (at most ``limit_s``): the
    state of a service whose autovacuum keeps up, just after a pass. The seconds waited."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        while time.perf_counter() - started < limit_s:
            if await conn.fetchval(_VACUUMED):
                break
            await anyio.sleep(2)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def table_sizes(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_SIZES)
    finally:
        await conn.close()
    return {
        r["relname"]: {
            "MB": round(r["bytes"] / 2**20, 1),
            "live": r["n_live_tup"],
            "dead": r["n_dead_tup"],
            "autovacuums": r["autovacuum_count"],
        }
        for r in rows
    }


# --- the workloads -------------------------------------------------------------------------------


async def adapter(dsn: str, workload: str, options: list[str], timeout_s: float) -> float:
    """One run of the durable adapter's ``workload`` on ``dsn``; its figure (tasks/s)."""
    argv = [sys.executable, str(ADAPTER), workload, "--dsn", dsn, *options]
    with anyio.fail_after(timeout_s):
        done = await anyio.run_process(argv, check=False, cwd=ADAPTER.parent)
    out = done.stdout.decode(errors="replace").splitlines()
    result = next((line for line in reversed(out) if line.startswith("RESULT ")), None)
    if done.returncode != 0 or result is None:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{workload}: exit {done.returncode}: " + " | ".join(tail))
    return float(json.loads(result.removeprefix("RESULT "))["value"])


async def results_per_s(dsn: str, count: int) -> float:
    """``Client.result`` of ``count`` random finished tasks, one at a time; calls per second."""
    conn = await asyncpg.connect(dsn)
    try:
        ids: list[uuid.UUID] = [
            r["task_id"]
            for r in await conn.fetch(
                "select task_id from durable.tasks_history tablesample system (1)"
                " where state = 'completed' limit $1",
                count * 4,
            )
        ]
        if len(ids) < count:  # a small table: sampling 1% of its pages finds too few
            ids = [
                r["task_id"]
                for r in await conn.fetch(
                    "select task_id from durable.all_tasks where state = 'completed'"
                )
            ]
    finally:
        await conn.close()
    chosen = random.sample(ids, min(count, len(ids)))
    async with Client(dsn, pool_size=2) as client:
        await client.result(QUEUE, chosen[0])  # connect and prepare, untimed
        started = time.perf_counter()
        for task_id in chosen:
            await client.result(QUEUE, task_id)
        return len(chosen) / (time.perf_counter() - started)


# --- the table -----------------------------------------------------------------------------------

WORKLOADS = ("noop", "result", "enqueue_one", "enqueue_batch")
MODE_LABELS = {"off": "vacuum never", "vacuumed": "vacuumed once", "on": "autovacuum"}


@dataclass(slots=True)
class CellResult:
    history_s: float = 0.0
    settle_s: float | None = None  # waited for autovacuum's first pass (autovacuum on)
    figures: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)


async def run_cell(
    server_dsn: str, size: int, args: argparse.Namespace, mode: str = "off"
) -> CellResult:
    name = f"history_{uuid.uuid4().hex[:10]}"  # hex only: safe to quote as an identifier
    await harness.execute(server_dsn, f'create database "{name}"')
    dsn = harness.with_database(server_dsn, name)
    cell = CellResult()
    try:
        async with Client(dsn, pool_size=1):  # applies the migrations, outside any timing
            pass
        cell.history_s = await make_history(dsn, size)
        log(f"    history of {size:,}: {cell.history_s:.0f} s")
        if size and mode == "vacuumed":
            started = time.perf_counter()
            await harness.execute(dsn, "vacuum analyze durable.tasks, durable.runs")
            log(f"    VACUUM ANALYZE: {time.perf_counter() - started:.0f} s")
        if size and args.checkpoint:
            started = time.perf_counter()
            await harness.execute(dsn, "checkpoint")
            log(f"    CHECKPOINT: {time.perf_counter() - started:.0f} s")
        if size and args.settle_s > 0 and await autovacuum_on(dsn):
            cell.settle_s = await settle(dsn, args.settle_s)
            log(f"    autovacuum's first pass over tasks and runs: {cell.settle_s:.0f} s")
        cell.sizes = await table_sizes(dsn)
        timeout = args.timeout
        cell.figures["noop"] = await adapter(
            dsn, "noop", [f"--n={args.n}", f"--concurrency={args.concurrency}"], timeout
        )
        cell.figures["result"] = await results_per_s(dsn, args.results)
        cell.figures["enqueue_one"] = await adapter(
            dsn, "enqueue_one", [f"--n={args.one}"], timeout
        )
        cell.figures["enqueue_batch"] = await adapter(
            dsn, "enqueue_batch", [f"--n={args.n}", f"--batch={args.batch}"], timeout
        )
        log(f"    {json.dumps(cell.figures)} {json.dumps(cell.sizes)}")
    finally:
        with anyio.CancelScope(shield=True):
            await harness.execute(server_dsn, f'drop database if exists "{name}" with (force)')
    return cell


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def render(cells: dict[tuple[str, int], CellResult], args: argparse.Namespace) -> str:
    labels = {
        "noop": f"no-op drain {args.n:,}, c={args.concurrency} (tasks/s)",
        "result": f"result() of a finished task x{args.results} (calls/s)",
        "enqueue_one": f"spawn {args.one:,} one at a time (tasks/s)",
        "enqueue_batch": f"spawn {args.n:,} batched by {args.batch:,} (tasks/s)",
    }
    columns = [(mode, size) for mode in args.modes for size in args.sizes]
    header = [
        "workload",
        *(f"{MODE_LABELS[m]} {s / 1e6:g}M" for m, s in columns),
    ]
    lines = [header]
    for workload in WORKLOADS:
        line = [labels[workload]]
        for mode, size in columns:
            cell = cells.get((mode, size))
            empty = cells.get((mode, 0))
            value = cell.figures.get(workload) if cell else None
            base = empty.figures.get(workload) if empty else None
            if value is None:
                line.append("—")
            elif base:
                line.append(f"{value:,.0f} ({value / base:.2f})")
            else:
                line.append(f"{value:,.0f}")
        lines.append(line)
    line = ["history made in (s)"]
    line += [f"{cells[c].history_s:,.0f}" if c in cells else "—" for c in columns]
    lines.append(line)
    line = ["waited for autovacuum (s)"]
    line += [
        f"{cells[c].settle_s:,.0f}" if c in cells and cells[c].settle_s is not None else "—"
        for c in columns
    ]
    lines.append(line)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = []
    for i, r in enumerate(lines):
        out.append(
            "  ".join(
                [
                    r[0].ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)),
                ]
            )
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def warm_up(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "n": 2_000, "one": 200, "results": 100})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default="0,1000000,10000000",
        type=lambda s: [int(x) for x in s.split(",")],
        help="finished tasks in history, comma-separated (0 is the baseline; always run)",
    )
    parser.add_argument(
        "--modes",
        default="off,on",
        type=lambda s: s.split(","),
        help="off: vacuum never runs; vacuumed: one VACUUM after the history is made;"
        " on: autovacuum at PostgreSQL's defaults",
    )
    parser.add_argument("--n", type=int, default=20_000, help="tasks drained and batch-spawned")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--one", type=int, default=2_000, help="tasks spawned one at a time")
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--results", type=int, default=1_000, help="result() calls")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=900,
        help="with autovacuum on, wait up to this long for its first pass after the history"
        " is made (0: measure at once)",
    )
    parser.add_argument(
        "--checkpoint",
        action="store_true",
        help="CHECKPOINT once the history is made, so the workloads do not share the disk with"
        " the writing out of the history just made",
    )
    parser.add_argument("--port", type=int, default=55_421, help="the private cluster's port")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per workload")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if 0 not in args.sizes:
        args.sizes = [0, *args.sizes]
    if bad := set(args.modes) - set(MODE_LABELS):
        parser.error(f"unknown --modes {sorted(bad)}: use off, vacuumed, on")
    return args


async def main(args: argparse.Namespace) -> None:
    cells: dict[tuple[str, int], CellResult] = {}
    for mode in args.modes:
        with private_cluster(args.port, autovacuum=mode == "on") as server_dsn:
            settings = await harness.describe_server(server_dsn)
            log(f"cluster autovacuum={mode}: {settings}")
            # a first pass on a fresh cluster runs cold (caches, the first connections'
            # catalogs): one small untimed cell warms it up before the measured ones
            await run_cell(server_dsn, 0, warm_up(args))
            for size in args.sizes:
                log(f"  cell: autovacuum {mode}, history {size:,}")
                cells[(mode, size)] = await run_cell(server_dsn, size, args, mode)
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC | private PostgreSQL 15 cluster per vacuum mode"
        f" (initdb defaults: shared_buffers 128MB, fsync on) | ratio to the empty database"
    )
    print(render(cells, args))
    for (mode, size), cell in sorted(cells.items()):
        print(f"tables after history {size:,}, autovacuum {mode}: {json.dumps(cell.sizes)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    f"{m}/{s}": {
                        "history_s": c.history_s,
                        "settle_s": c.settle_s,
                        **c.figures,
                        "sizes": c.sizes,
                    }
                    for (m, s), c in cells.items()
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        anyio.run(main, parse_args(None))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
