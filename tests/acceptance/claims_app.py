"""The app of the fair-claims tests (``test_fair_claims.py``), run as a worker subprocess.

As a script (``cwd`` = this directory, ``DURABLE_DSN`` = the test's database) it runs a worker as
:mod:`support.worker_script` says. With ``CLAIMS_AHEAD_FULL=1`` the worker always claims as far
ahead of its free slots as it may (``ClaimAhead`` at its cap), so that a test holds runs claimed
ahead of a slot when it kills the worker. Each handler that starts appends ``task_id attempt`` to
``$CLAIMS_STARTS`` as its first act, before any ``await``: a line there is proof its handler
started, written before its worker could report the start.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import durable
from durable.runtime.claim_ahead import ClaimAhead

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.side_tables import record_done, side_pool, wait_gate  # noqa: E402
from support.worker_script import run_worker_script  # noqa: E402

QUEUE = "default"

app = durable.Durable()


def note_start(ctx: durable.TaskContext) -> None:
    """The handler's first act: a line that proves it started (a write SIGKILL cannot undo)."""
    path = os.environ.get("CLAIMS_STARTS")
    if path:
        with open(path, "a") as starts:  # a plain write, before any await: on purpose
            starts.write(f"{ctx.task_id} {ctx.attempt}\n")


@app.task(name="gated", max_attempts=1)
async def gated(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    """Runs until the test opens the task's gate."""
    note_start(ctx)
    await wait_gate(ctx.task_id, "start")
    return await record_done(ctx)


@app.task(name="short", max_attempts=1)
async def short(ctx: durable.TaskContext, params: Any) -> None:
    note_start(ctx)


@app.task(name="kills_its_worker", max_attempts=2)
async def kills_its_worker(ctx: durable.TaskContext, params: Any) -> None:
    """SIGKILLs the worker that runs it, at once: before the worker can report its start."""
    note_start(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


def _claim_full_ahead(self: ClaimAhead, latency: float) -> None:
    self.runs = self.limit


if __name__ == "__main__":
    if os.environ.get("CLAIMS_AHEAD_FULL") == "1":
        ClaimAhead.claimed = _claim_full_ahead  # type: ignore[method-assign]
    run_worker_script(app, side=side_pool, description="a worker of the fair-claims tests")
