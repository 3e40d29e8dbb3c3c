"""Commands on tasks by name or filter: ``spawn``, ``status``, ``emit`` and ``cancel-by``."""

from __future__ import annotations

import argparse
import json

from durable.cli import session
from durable.cli.exits import EXIT_OK, UsageError
from durable.cli.options import spawn_options
from durable.cli.render import count, print_json, table
from durable.protocol.errors import check_queue_name
from durable.protocol.records import TaskState


def cmd_spawn(args: argparse.Namespace) -> int:
    try:
        options = spawn_options(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    async def spawn() -> int:
        async with session.connect(args) as client:
            info = await client.spawn(args.queue, args.task_name, args.params, options)
        print(
            json.dumps(
                {
                    "task_id": str(info.task_id),
                    "run_id": str(info.run_id),
                    "attempt": info.attempt,
                    "created": info.created,
                }
            )
        )
        return EXIT_OK

    return session.run(spawn)


def cmd_status(args: argparse.Namespace) -> int:
    if args.queue is not None:
        check_queue_name(args.queue)

    async def status() -> int:
        async with session.connect(args) as client:
            counts = await client.queue_counts(args.tags)
            paused = {p.queue for p in await client.list_paused_queues()}
        per_queue: dict[str, dict[str, int]] = {}
        for row_count in counts:
            if args.queue is None or row_count.queue == args.queue:
                row = per_queue.setdefault(row_count.queue, dict.fromkeys(TaskState, 0))
                row[row_count.state] += row_count.count
        if not args.tags:  # a paused queue shows even without tasks
            for queue in paused:
                if args.queue is None or queue == args.queue:
                    per_queue.setdefault(queue, dict.fromkeys(TaskState, 0))
        rows = [
            {"queue": queue, **per_queue[queue], "paused": queue in paused}
            for queue in sorted(per_queue)
        ]
        if args.json:
            print_json(rows)
        else:
            headers = ["queue", *TaskState]
            lines = ([*(row[h] for h in headers), "yes" if row["paused"] else "no"] for row in rows)
            print(table([*headers, "paused"], lines))
        return EXIT_OK

    return session.run(status)


def cmd_emit(args: argparse.Namespace) -> int:

    async def emit() -> int:
        async with session.connect(args) as client:
            woken = await client.emit_event(args.event, args.payload)
        print(f"event {args.event!r} emitted: {count(woken, 'waiting task')} woken")
        return EXIT_OK

    return session.run(emit)


def cmd_cancel_by(args: argparse.Namespace) -> int:
    if args.queue is None and args.task_name is None and not args.tags:
        raise UsageError("give at least one filter: -q QUEUE, --task NAME or --tag T")
    if args.queue is not None:
        check_queue_name(args.queue)

    async def cancel_by() -> int:
        async with session.connect(args) as client:
            cancelled = await client.cancel_by(args.queue, args.task_name, args.tags)
        print(f"{count(cancelled, 'task')} cancelled")
        return EXIT_OK

    return session.run(cancel_by)
