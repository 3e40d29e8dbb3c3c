"""The app the worker acceptance tests run in subprocesses, and the helpers those tests share.

As a script (``cwd`` = this directory, ``DURABLE_DSN`` = the test's database)::

    python worker_app.py [-q QUEUE]... [-c N] [--claim-timeout S] [--grace-period S]
                         [--poll-interval S] [--worker-id ID]

runs ``app.run_worker(...)`` until SIGTERM/SIGINT (drain) or SIGKILL, logging JSON lines to stderr.
Each option also reads an environment variable (``WORKER_QUEUES`` comma-separated,
``WORKER_CONCURRENCY``, ``WORKER_CLAIM_TIMEOUT``, ``WORKER_GRACE_PERIOD``, ``WORKER_POLL_INTERVAL``,
``WORKER_ID``).

The tasks record what they execute in side tables of the same database (see :data:`SIDE_TABLES`),
written through a pool of their own rather than durable's, so that a test can count executions
across processes: a step inserts into ``step_exec`` before it returns its value, a task inserts
into ``done_exec`` just before it returns, and ``gate`` rows let a test release a waiting task.

The tests import it for :func:`worker_process`, :func:`running_worker` (an in-process worker) and
the wait helpers; importing it connects to nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import asyncpg

import durable
from durable.cli.logs import configure_logging
from durable.runtime.worker import Worker

QUEUE = "default"
HERE = Path(__file__).resolve().parent

SIDE_TABLES = """
create table step_exec (task_id uuid not null, step text not null, pid int not null,
                        at timestamptz not null default now());
create table done_exec (task_id uuid not null, run_id uuid not null, pid int not null,
                        at timestamptz not null default now());
create table gate (task_id uuid primary key);
"""

#: How often a task waiting on its gate looks for the row.
GATE_POLL_S = 0.05

app = durable.Durable(pool_size=int(os.environ.get("WORKER_POOL_SIZE", "4")))

_side: asyncpg.Pool | None = None


def _side_pool() -> asyncpg.Pool:
    if _side is None:
        raise RuntimeError("the side pool is opened by main(); run this module as a script")
    return _side


# --- what tasks record ----------------------------------------------------------------------------


async def record_step(task_id: uuid.UUID, step: str, value: Any) -> Any:
    """A step's body: note that it executed (here, in this process), then return ``value``."""
    await _side_pool().execute(
        "insert into step_exec (task_id, step, pid) values ($1, $2, $3)", task_id, step, os.getpid()
    )
    return value


async def gate_open(task_id: uuid.UUID) -> bool:
    row = await _side_pool().fetchval("select 1 from gate where task_id = $1", task_id)
    return row is not None


async def wait_gate(task_id: uuid.UUID, step: str) -> str:
    """A step's body: note that it started, then wait until the test opens the task's gate."""
    await record_step(task_id, step, None)
    while not await gate_open(task_id):  # noqa: ASYNC110 — the gate is a row another process writes
        await anyio.sleep(GATE_POLL_S)
    return "gate-opened"


async def record_done(ctx: durable.TaskContext) -> dict[str, Any]:
    """The task's last act: note which run of it finished, here."""
    pid = os.getpid()
    await _side_pool().execute(
        "insert into done_exec (task_id, run_id, pid) values ($1, $2, $3)",
        ctx.task_id,
        ctx.run_id,
        pid,
    )
    return {"run_id": str(ctx.run_id), "attempt": ctx.attempt, "pid": pid}


# --- the tasks ------------------------------------------------------------------------------------


@app.task(name="three_steps")
async def three_steps(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Step ``two`` waits on the gate, so a test can kill the worker inside it."""
    one = await ctx.step("one", record_step, ctx.task_id, "one", 1)
    two = await ctx.step("two", wait_gate, ctx.task_id, "two")
    three = await ctx.step("three", record_step, ctx.task_id, "three", 3)
    return {"steps": [one, two, three], **await record_done(ctx)}


@app.task(name="block_loop")
async def block_loop(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Attempt 1 blocks the event loop for ``params["block_s"]``; later attempts finish at once."""
    if ctx.attempt == 1:
        await record_step(ctx.task_id, "block", None)
        time.sleep(params["block_s"])  # noqa: ASYNC251 — blocking the event loop is the point
    return await record_done(ctx)


@app.task(name="slow_unless_gated")
async def slow_unless_gated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Sleeps ``params["sleep_s"]`` unless the task's gate is already open when it starts."""
    await record_step(ctx.task_id, "start", None)
    if not await gate_open(ctx.task_id):
        await anyio.sleep(params["sleep_s"])
    return await record_done(ctx)


@app.task(name="gated")
async def gated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Runs until the test opens the task's gate."""
    await wait_gate(ctx.task_id, "start")
    return await record_done(ctx)


@app.task(name="noop")
async def noop(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    return await record_done(ctx)


# --- the worker process ---------------------------------------------------------------------------


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def main(argv: list[str] | None = None, serve_app: durable.Durable | None = None) -> None:
    """Run a worker of ``serve_app`` (default: this module's app) as the options say. Another
    test app module runs its own tasks with ``main(serve_app=its_app)`` under ``__main__``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("-q", "--queue", action="append", dest="queues")
    parser.add_argument(
        "-c", "--concurrency", type=int, default=int(_env("WORKER_CONCURRENCY", "4"))
    )
    parser.add_argument(
        "--claim-timeout", type=float, default=float(_env("WORKER_CLAIM_TIMEOUT", "2"))
    )
    parser.add_argument(
        "--grace-period", type=float, default=float(_env("WORKER_GRACE_PERIOD", "5"))
    )
    parser.add_argument(
        "--poll-interval", type=float, default=float(_env("WORKER_POLL_INTERVAL", "0.2"))
    )
    parser.add_argument("--worker-id", default=os.environ.get("WORKER_ID"))
    args = parser.parse_args(argv)
    queues: list[str] = args.queues or _env("WORKER_QUEUES", QUEUE).split(",")
    configure_logging(json=True)
    anyio.run(
        _serve,
        serve_app or app,
        queues,
        args.concurrency,
        args.claim_timeout,
        args.grace_period,
        args.poll_interval,
        args.worker_id,
    )


async def _serve(
    serve_app: durable.Durable,
    queues: list[str],
    concurrency: int,
    claim_timeout: float,
    grace_period: float,
    poll_interval: float,
    worker_id: str | None,
) -> None:
    global _side  # one side pool per worker process, opened here
    _side = await asyncpg.create_pool(os.environ["DURABLE_DSN"], min_size=1, max_size=2)
    try:
        await serve_app.run_worker(
            queues,
            concurrency,
            claim_timeout,
            grace_period=grace_period,
            poll_interval=poll_interval,
            worker_id=worker_id,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await _side.close()


# --- helpers for the tests (they run in the test process) ----------------------------------------

T = TypeVar("T")


@dataclass
class WorkerProcess:
    """A worker subprocess whose JSON log lines go to ``log_path``."""

    process: anyio.abc.Process
    log_path: Path
    worker_id: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events so far (``event``: only those with that name)."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # not a log event (a warning printed by something else)
            if isinstance(doc, dict) and (event is None or doc.get("event") == event):
                found.append(doc)
        return found

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost machine would."""
        self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the worker drains."""
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        with anyio.fail_after(timeout):
            return await self.process.wait()


@contextlib.asynccontextmanager
async def worker_process(
    dsn: str, log_path: Path, worker_id: str, *args: str, script: str = "worker_app.py"
) -> AsyncIterator[WorkerProcess]:
    """Start ``script`` (default ``worker_app.py``, in this directory) as a script on ``dsn``;
    SIGKILL it on exit if it still runs."""
    env = {
        **os.environ,
        "DURABLE_DSN": dsn,
        "WORKER_ID": worker_id,
        "PYTHONUNBUFFERED": "1",
    }
    log = log_path.open("wb")
    try:
        process = await anyio.open_process(
            [sys.executable, str(HERE / script), *args],
            stdin=None,
            stdout=log,
            stderr=log,
            cwd=HERE,
            env=env,
        )
        try:
            yield WorkerProcess(process, log_path, worker_id)
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await process.aclose()
    finally:
        log.close()


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns a value (not None); fail naming ``what`` on timeout."""
    deadline = anyio.current_time() + timeout
    while True:
        value = await probe()
        if value is not None:
            return value
        if anyio.current_time() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {value!r})"
            )
        await anyio.sleep(interval)


async def wait_finished(
    client: durable.Client, task_id: uuid.UUID, *, timeout: float
) -> durable.TaskRecord:
    """The task once it reached a final state."""

    async def probe() -> durable.TaskRecord | None:
        record = await client.get_task(None, task_id)
        return record if record.state.finished else None

    return await wait_for(probe, timeout=timeout, what=f"task {task_id} to finish")


async def wait_event(
    worker: WorkerProcess, event: str, *, timeout: float, **match: Any
) -> dict[str, Any]:
    """The first log event ``event`` of ``worker`` whose fields include ``match``."""

    async def probe() -> dict[str, Any] | None:
        for doc in worker.events(event):
            if all(doc.get(k) == v for k, v in match.items()):
                return doc
        return None

    return await wait_for(probe, timeout=timeout, what=f"{event} {match} from {worker.worker_id}")


@contextlib.asynccontextmanager
async def running_worker(
    app: durable.Durable,
    *,
    concurrency: int = 4,
    claim_timeout: float = 5.0,
    **options: Any,
) -> AsyncIterator[Worker]:
    """An in-process worker of ``app`` on :data:`QUEUE`; drained on exit."""
    options = {"poll_interval": 0.1, "grace_period": 1.0, **options}
    async with app, anyio.create_task_group() as tg:
        worker: Worker = await tg.start(
            functools.partial(
                app.run_worker,
                [QUEUE],
                concurrency,
                claim_timeout,
                handle_signals=False,
                **options,
            )
        )
        try:
            yield worker
        finally:
            worker.drain()


@contextlib.asynccontextmanager
async def side_connection(
    dsn: str, *, create_tables: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the test's database (optionally creating the side tables)."""
    conn = await asyncpg.connect(dsn)
    try:
        if create_tables:
            await conn.execute(SIDE_TABLES)
        yield conn
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
