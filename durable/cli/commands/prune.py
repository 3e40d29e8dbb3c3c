"""``durable prune``: delete finished tasks older than an age, with their runs and checkpoints."""

from __future__ import annotations

import argparse

from durable.cli import session
from durable.cli.exits import EXIT_OK
from durable.cli.render import count
from durable.protocol.records import TaskState


def cmd_prune(args: argparse.Namespace) -> int:
    states = args.states or [str(s) for s in TaskState if s.finished]

    async def prune() -> int:
        async with session.connect(args) as client:
            counts = {
                state: await client.prune_tasks(
                    args.older_than, [state], batch=args.batch, task_names=args.task_names
                )
                for state in states
            }
            rows = await client.prune_bookkeeping(args.older_than, batch=args.batch)
        each = ", ".join(f"{n} {state}" for state, n in counts.items())
        print(
            f"pruned {count(sum(counts.values()), 'task')} that ended more than "
            f"{_age_text(args.older_than)} ago ({each}), with their runs and checkpoints; "
            f"{rows} old rows of events, partition turns and stopped workers"
        )
        return EXIT_OK

    return session.run(prune)


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
