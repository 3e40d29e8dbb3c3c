"""``durable list``: the task browser on the command line — tasks newest first, filtered by live
state, queue, task name, tags, spawn time, and found by id, idempotency key or params."""

from __future__ import annotations

import argparse
import dataclasses

from durable.cli import session
from durable.cli.exits import EXIT_OK
from durable.cli.render import CELL_MAX, clip, print_json, table, when
from durable.protocol.errors import check_queue_name
from durable.protocol.records import TaskSummary


def cmd_list(args: argparse.Namespace) -> int:
    if args.queue is not None:
        check_queue_name(args.queue)

    async def browse() -> int:
        async with session.connect(args) as client:
            page = await client.list_tasks(
                queue=args.queue,
                task_name=args.task_name,
                state=args.state,
                tags=args.tags,
                since=args.since,
                until=args.until,
                task_id=args.id,
                idempotency_key=args.key,
                params=args.params,
                before=args.before,
                limit=args.limit,
            )
        if args.json:
            print_json(
                {
                    "tasks": [dataclasses.asdict(task) for task in page.tasks],
                    "next_before": page.next_before,
                }
            )
            return EXIT_OK
        if not page.tasks:
            print("no task matches" if args.before is None else "no older task matches")
            return EXIT_OK
        print(_tasks_table(page.tasks))
        if page.next_before is not None:
            print(f"older: the same command with --before {page.next_before}")
        return EXIT_OK

    return session.run(browse)


def _tasks_table(tasks: list[TaskSummary]) -> str:
    headers = ["created", "task_id", "task_name", "queue", "state", "attempt", "tags", "failure"]
    return table(
        headers,
        (
            [
                when(t.created_at),
                t.task_id,
                clip(t.task_name, CELL_MAX),
                t.queue,
                t.state,
                f"{t.attempt}/{t.max_attempts}",
                ",".join(t.tags) or None,
                t.error_type or t.failure_reason,
            ]
            for t in tasks
        ),
    )
