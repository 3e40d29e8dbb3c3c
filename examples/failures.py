"""Failures and recovery: retries, a custom backoff, a snooze, an on_discard hook, the failed work
an operator sees, and a retry from the last checkpoint once the cause is fixed.

    python examples/failures.py              # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/failures.py

``sync_invoices`` fetches invoices in a checkpointed step, then posts them to a ledger that
refuses them (a bug: a ``ValueError``). After its two attempts it is dead; its ``on_discard`` hook
records why. The program lists the failed work and its groups, "deploys the fix", and retries
the task: the fetch step is replayed from its checkpoint, not run again. ``poll_export`` snoozes
until an export is ready, spending no attempt.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import anyio
import structlog

from durable import (
    DiscardReason,
    Durable,
    Fixed,
    Snooze,
    TaskContext,
    TaskDiscarded,
    reason_class_counts,
)

app = Durable()

calls: Counter[str] = Counter()
ledger_fixed = False  # the bug, until the program "deploys the fix"
discarded: list[str] = []  # what the on_discard hook saw
hook_ran = anyio.Event()


class RateLimited(Exception):
    """What a rate-limited upstream raises: its reason class is ``exhausted``."""


async def fetch_invoices(account: str) -> list[int]:
    calls["fetch"] += 1
    return [120, 80]


async def post_to_ledger(invoices: list[int]) -> int:
    calls["post"] += 1
    if not ledger_fixed:
        raise ValueError("ledger refused the batch: currency missing")
    return sum(invoices)


# --8<-- [start:retries]
def backoff(attempt: int, error: BaseException) -> float:
    """Seconds before the next attempt: the worker asks this instead of the ``retry`` strategy."""
    return 60.0 if isinstance(error, RateLimited) else 0.1 * attempt


async def on_discard(ctx: TaskContext, error: BaseException) -> None:
    """Called once the task ended without completing; at least once, so keep it idempotent."""
    assert isinstance(error, TaskDiscarded)  # .reason, .state, .failure
    if error.reason is not DiscardReason.CANCELLED:  # cancelled on purpose: nobody to alert
        discarded.append(
            f"{ctx.task_name} {error.reason}: {error.failure and error.failure.message}"
        )
    hook_ran.set()


@app.task(name="sync_invoices", max_attempts=2, backoff=backoff, on_discard=on_discard)
async def sync_invoices(ctx: TaskContext, params: dict[str, str]) -> int:
    invoices = await ctx.step("fetch", fetch_invoices, params["account"])
    return await ctx.step("post", post_to_ledger, invoices)


# --8<-- [end:retries]


# --8<-- [start:snooze]
@app.task(name="poll_export", retry=Fixed(5))
async def poll_export(ctx: TaskContext, params: dict[str, Any]) -> str:
    calls["poll"] += 1
    if calls["poll"] < 3:  # the export is still running
        raise Snooze(0.1)  # run again in 0.1 s, without spending an attempt
    return f"export {params['export_id']} ready"


# --8<-- [end:snooze]


async def main() -> None:
    global ledger_fixed
    async with app, anyio.create_task_group() as tg:
        worker = await tg.start(
            lambda task_status: app.run_worker(
                poll_interval=0.1, handle_signals=False, task_status=task_status
            )
        )
        export = await poll_export.spawn({"export_id": 7})
        outcome = await export.result(timeout=30)
        record = await app.get_task(export.task_id)
        runs, attempt = len(record.runs), record.attempt
        print(f"poll_export: {outcome.result!r} after {runs} runs, attempt {attempt}")

        handle = await sync_invoices.spawn({"account": "acme"})
        with anyio.fail_after(30):
            await hook_ran.wait()  # the hook runs as a task of its own, right after the end
        print("on_discard:", discarded[0])

        # --8<-- [start:failed_work]
        for row in await app.failed_work(since=3600):  # the last hour, newest failure first
            print(row.task_name, row.state, row.failure_reason, row.reason_class, row.error_type)
            print("  recovery:", row.recovery, "after", row.last_checkpoint)
        for group in await app.failure_groups():
            what = f"{group.task_name} {group.error_type} ({group.reason_class})"
            print(f"group: {group.count} x {what}")
        counts = reason_class_counts(await app.failed_work())
        print("by class:", {str(c): n for c, n in counts.items() if n})
        # --8<-- [end:failed_work]

        ledger_fixed = True  # the fix is deployed
        # --8<-- [start:retry]
        info = await app.retry(handle.task_id)  # a new run; the checkpoints are kept
        fixed = await handle.result(timeout=30)  # same task: the fetch step is replayed
        # --8<-- [end:retry]
        print(f"after the retry: {fixed.state} {fixed.result} (retry revived {len(info.revived)})")
        print(f"fetch ran {calls['fetch']} time(s), post ran {calls['post']} time(s)")
        print("failed work left:", len(await app.failed_work()))
        worker.drain()


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # the failures are on purpose: keep durable's warnings about them (task.dead) out
    logging.getLogger("durable").setLevel(logging.ERROR)
    anyio.run(main)
