"""The app the chaos suite runs in worker subprocesses, and the side tables it records into.

As a script (``cwd`` = this directory, ``DURABLE_DSN`` = the test's database)::

    python chaos_app.py [-c N] [--claim-timeout S] [--poll-interval S] [--worker-id ID]

runs ``app.run_worker(["chaos"], ...)`` until SIGTERM/SIGINT (drain) or SIGKILL (the point),
logging JSON lines to stderr.

Task ``chaos_steps`` runs three checkpointed steps. Each step body first inserts a row into
``step_exec`` (through a pool of its own, so the row is committed whatever happens next, and
stamped with the database clock, ``clock_timestamp()``, like the checkpoint's ``created_at``),
then sleeps 0-20 ms so that kills land inside steps, then returns a value that depends only on
the task's ``params["i"]`` and the step: :func:`step_value`. The task's last act is a ``done_exec``
row. The suite compares these rows with ``durable.checkpoints`` and ``durable.runs``.

Importing this module connects to nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import uuid
from typing import Any

import anyio
import asyncpg

import durable
from durable.cli.logs import configure_logging

QUEUE = "chaos"
TASK_NAME = "chaos_steps"
STEPS = ("s1", "s2", "s3")
#: A step body sleeps a random time up to this, so that a SIGKILL lands inside a step.
STEP_SLEEP_MAX_S = 0.020

SIDE_TABLES = """
create table step_exec (task_id uuid not null, step text not null, run_id uuid not null,
                        pid int not null, at timestamptz not null default clock_timestamp());
create table done_exec (task_id uuid not null, run_id uuid not null, pid int not null,
                        at timestamptz not null default clock_timestamp());
"""

app = durable.Durable(pool_size=int(os.environ.get("WORKER_POOL_SIZE", "8")))

_side: asyncpg.Pool | None = None


def _side_pool() -> asyncpg.Pool:
    if _side is None:
        raise RuntimeError("the side pool is opened by main(); run this module as a script")
    return _side


def step_value(i: int, step: str) -> int:
    """What step ``step`` of task ``i`` returns (the suite checks the checkpoints against it)."""
    return 10 * i + STEPS.index(step) + 1


async def run_step(task_id: uuid.UUID, run_id: uuid.UUID, step: str, i: int) -> int:
    """A step's body: record this execution, take a little while, return the step's value."""
    await _side_pool().execute(
        "insert into step_exec (task_id, step, run_id, pid) values ($1, $2, $3, $4)",
        task_id,
        step,
        run_id,
        os.getpid(),
    )
    await anyio.sleep(random.uniform(0, STEP_SLEEP_MAX_S))
    return step_value(i, step)


@app.task(name=TASK_NAME, queue=QUEUE)
async def chaos_steps(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    i: int = params["i"]
    values = [await ctx.step(step, run_step, ctx.task_id, ctx.run_id, step, i) for step in STEPS]
    await _side_pool().execute(
        "insert into done_exec (task_id, run_id, pid) values ($1, $2, $3)",
        ctx.task_id,
        ctx.run_id,
        os.getpid(),
    )
    return {"i": i, "steps": values}


# --- the worker process ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--claim-timeout", type=float, default=1.0)
    parser.add_argument("--poll-interval", type=float, default=0.2)
    parser.add_argument("--worker-id", default=None)
    args = parser.parse_args(argv)
    configure_logging(json=True)
    anyio.run(_serve, args.concurrency, args.claim_timeout, args.poll_interval, args.worker_id)


async def _serve(
    concurrency: int, claim_timeout: float, poll_interval: float, worker_id: str | None
) -> None:
    global _side  # one side pool per worker process, opened here
    _side = await asyncpg.create_pool(os.environ["DURABLE_DSN"], min_size=1, max_size=4)
    try:
        await app.run_worker(
            [QUEUE],
            concurrency,
            claim_timeout,
            poll_interval=poll_interval,
            grace_period=2.0,
            worker_id=worker_id,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await _side.close()


if __name__ == "__main__":
    main()
