"""A production setup: migrations in the deploy step, then an app that only checks the schema,
sized for its database, with retention and a release version; and its worker's settings.

    python examples/deploy.py                # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/deploy.py

The program runs ``durable migrate`` as a deploy step would (a subprocess), then starts the app
with ``migrate=False`` and a worker with explicit settings, runs one task, and drains.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import anyio
import structlog

from durable import Durable, Retention, TaskContext

# --8<-- [start:app]
app = Durable(
    os.environ.get("DURABLE_DSN"),  # None: the embedded server (development only)
    migrate=False,  # `durable migrate` ran in the deploy step; here the schema is only checked
    pool_size=5,  # connections per process: mind max_connections across every process
    statement_cache_size=100,  # 0 behind pgbouncer in transaction mode
    retention=Retention(  # finished tasks are pruned by the workers after this long
        completed=timedelta(days=1), failed=timedelta(days=30), cancelled=timedelta(days=7)
    ),
    version=os.environ.get("RELEASE", "2024-06-01"),  # each run records it
)
# --8<-- [end:app]


@app.task(name="send_welcome", queue="emails", retention=Retention(completed=timedelta(hours=1)))
async def send_welcome(ctx: TaskContext, params: dict[str, Any]) -> bool:
    return True


async def main() -> None:
    async with app, anyio.create_task_group() as tg:
        # --8<-- [start:worker]
        worker = await tg.start(
            lambda task_status: app.run_worker(
                queues=["emails"],  # default: every queue the app's tasks use
                concurrency=20,  # handlers at once in this process
                claim_timeout=60.0,  # the lease; also how long a crashed run waits
                grace_period=30.0,  # on SIGTERM: how long running tasks may finish
                poll_interval=2.0,  # a fallback: NOTIFY wakes the worker when work arrives
                handle_signals=False,  # True (the default) drains on SIGTERM/SIGINT
                task_status=task_status,
            )
        )
        # --8<-- [end:worker]
        handle = await send_welcome.spawn({"user_id": 7})
        outcome = await handle.result(timeout=30)
        record = await app.get_task(handle.task_id)
        print(f"send_welcome {outcome.state}, code version {record.runs[-1].code_version}")
        worker.drain()


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # the deploy step, before any new process starts: migrations under an advisory lock
    step = subprocess.run(
        [sys.executable, "-m", "durable", "migrate", "--log-level", "warning"],
        capture_output=True,
        text=True,
        check=True,
    )
    print("durable migrate:", step.stdout.strip().splitlines()[0] if step.stdout else "ok")
    anyio.run(main)
