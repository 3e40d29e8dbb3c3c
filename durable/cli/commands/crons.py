"""``durable cron list|add|remove|pause|resume``: the cron schedules stored in the database."""

from __future__ import annotations

import argparse
from typing import Any

from durable.cli import session
from durable.cli.exits import EXIT_OK, UsageError
from durable.cli.options import spawn_options
from durable.cli.render import json_text, print_json, table, when
from durable.protocol.records import CronSchedule

#: The widest params shown in the table (--json shows everything).
_PARAMS_MAX = 40


def _row(schedule: CronSchedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "expr": schedule.expr,
        "timezone": schedule.timezone,
        "queue": schedule.queue,
        "task_name": schedule.task_name,
        "params": schedule.params,
        "options": schedule.options,
        "missed": str(schedule.missed),
        "source": str(schedule.source),
        "paused": schedule.paused,
        "paused_at": schedule.paused_at,
        "last_slot": schedule.last_slot,
        "last_task_id": schedule.last_task_id,
        "fired_through": schedule.fired_through,
    }


def cmd_cron_list(args: argparse.Namespace) -> int:
    async def cron_list() -> int:
        async with session.connect(args) as client:
            listed = await client.list_cron_schedules([args.queue] if args.queue else None)
        if args.json:
            print_json([_row(s) for s in listed.schedules])
            return EXIT_OK
        headers = ["name", "expr", "timezone", "queue", "task", "params", "missed", "source"]
        headers += ["state", "last slot"]
        print(
            table(
                headers,
                (
                    [
                        s.name,
                        s.expr,
                        s.timezone,
                        s.queue,
                        s.task_name,
                        json_text(s.params, _PARAMS_MAX),
                        str(s.missed),
                        str(s.source),
                        "paused" if s.paused else "active",
                        when(s.last_slot),
                    ]
                    for s in listed.schedules
                ),
            )
        )
        return EXIT_OK

    return session.run(cron_list)


def cmd_cron_add(args: argparse.Namespace) -> int:
    try:
        options = spawn_options(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    async def add() -> int:
        async with session.connect(args) as client:
            created = await client.set_cron_schedule(
                args.name,
                args.expr,
                args.task_name,
                args.params,
                queue=args.queue,
                timezone=args.timezone,
                missed=args.missed,
                options=options,
            )
        print(f"cron schedule {args.name!r} {'added' if created else 'updated'}")
        return EXIT_OK

    return session.run(add)


def cmd_cron_remove(args: argparse.Namespace) -> int:
    async def remove() -> int:
        async with session.connect(args) as client:
            await client.remove_cron_schedule(args.name)
        print(f"cron schedule {args.name!r} removed")
        return EXIT_OK

    return session.run(remove)


def cmd_cron_pause(args: argparse.Namespace) -> int:
    async def pause() -> int:
        async with session.connect(args) as client:
            await client.pause_cron_schedule(args.name)
        print(f"cron schedule {args.name!r} paused")
        return EXIT_OK

    return session.run(pause)


def cmd_cron_resume(args: argparse.Namespace) -> int:
    async def resume() -> int:
        async with session.connect(args) as client:
            await client.resume_cron_schedule(args.name)
        print(f"cron schedule {args.name!r} resumed")
        return EXIT_OK

    return session.run(resume)
