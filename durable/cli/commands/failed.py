"""``durable failed``: the failed work, grouped by reason x error type x task name, then each task;
its filters and tables serve the bulk recovery commands too."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from durable.cli import session
from durable.cli.exits import EXIT_OK
from durable.cli.render import count, error_text, print_json, table, when
from durable.protocol.errors import check_queue_name
from durable.protocol.failures import reason_class_counts
from durable.protocol.records import (
    FailedWork,
    FailedWorkState,
    FailureGroup,
    ReasonClass,
    Recovery,
)


def work_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The failed-work filters given on the command line (queue checked)."""
    if args.queue is not None:
        check_queue_name(args.queue)
    return {
        "queue": args.queue,
        "task_name": args.task_name,
        "reason": args.reason,
        "since": args.since,
        "reason_class": args.reason_class,
        "error_type": args.error_type,
        "tags": args.tags,
    }


def cmd_failed(args: argparse.Namespace) -> int:
    filters = work_filters(args)

    async def failed() -> int:
        async with session.connect(args) as client:
            rows = await client.failed_work(**filters, limit=args.limit, state=args.state)
            groups = await client.failure_groups(**filters, state=args.state)
        classes = reason_class_counts(rows)
        if args.json:
            print_json(
                {
                    "groups": [dataclasses.asdict(g) for g in groups],
                    "reason_classes": {str(c): n for c, n in classes.items() if n},
                    "rows": [dataclasses.asdict(r) for r in rows],
                }
            )
            return EXIT_OK
        print(_failed_summary(rows, classes, args.limit))
        if not rows:
            return EXIT_OK
        print()
        print("groups (reason x error type x task name):")
        print(_groups_table(groups))
        print()
        print("tasks, newest failure first:")
        print(failed_table(rows))
        return EXIT_OK

    return session.run(failed)


def _failed_summary(
    rows: Sequence[FailedWork], classes: dict[ReasonClass, int], limit: int | None
) -> str:
    dead = sum(1 for r in rows if r.state is FailedWorkState.FAILED)
    more = (
        " (the newest; raise --limit for more)" if limit is not None and len(rows) == limit else ""
    )
    by_class = ", ".join(f"{c} {n}" for c, n in classes.items() if n) or "-"
    return (
        f"failed work: {count(len(rows), 'task')}{more}: {dead} dead, "
        f"{len(rows) - dead} retrying; by reason class: {by_class}"
    )


def _groups_table(groups: Sequence[FailureGroup]) -> str:
    headers = ["count", "reason", "class", "error_type", "task_name", "queue", "first_seen"]
    headers.append("last_seen")
    return table(
        headers,
        (
            [
                g.count,
                g.failure_reason,
                g.reason_class,
                g.error_type,
                g.task_name,
                g.queue,
                when(g.first_seen),
                when(g.last_seen),
            ]
            for g in groups
        ),
        indent=2,
    )


def failed_table(rows: Sequence[FailedWork]) -> str:
    """One line per task of the failed work, newest failure first."""
    headers = ["failed_at", "queue", "task_name", "task_id", "state", "attempt", "reason"]
    headers += ["class", "error", "recovery"]
    return table(
        headers,
        (
            [
                when(row.failed_at),
                row.queue,
                row.task_name,
                row.task_id,
                row.state,
                f"{row.attempt}/{row.max_attempts}",
                row.failure_reason,
                row.reason_class,
                error_text(row.error),
                _recovery_text(row),
            ]
            for row in rows
        ),
        indent=2,
    )


def _recovery_text(row: FailedWork) -> str:
    if row.recovery is Recovery.RETRY_FROM_CHECKPOINT:
        return f"retry from {row.last_checkpoint!r}"
    return str(row.recovery)
