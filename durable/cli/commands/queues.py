"""``durable queue list|pause|resume``: paused queues accept spawns and are not claimed from."""

from __future__ import annotations

import argparse

from durable.cli import session
from durable.cli.exits import EXIT_OK
from durable.cli.render import print_json, table, when
from durable.protocol.errors import check_queue_name
from durable.protocol.records import TaskState

#: The live states a queue's line counts.
_LIVE = (TaskState.PENDING, TaskState.RUNNING, TaskState.SLEEPING)


def cmd_queue_list(args: argparse.Namespace) -> int:
    async def queue_list() -> int:
        async with session.connect(args) as client:
            counts = await client.queue_counts()
            paused = {p.queue: p.paused_at for p in await client.list_paused_queues()}
        live: dict[str, dict[str, int]] = {q: dict.fromkeys(_LIVE, 0) for q in paused}
        for row in counts:
            per_state = live.setdefault(row.queue, dict.fromkeys(_LIVE, 0))
            if row.state in per_state:
                per_state[row.state] += row.count
        rows = [
            {
                "queue": queue,
                "paused": queue in paused,
                "paused_at": paused.get(queue),
                **{str(state): live[queue][state] for state in _LIVE},
            }
            for queue in sorted(live)
        ]
        if args.json:
            print_json(rows)
        else:
            headers = ["queue", "state", *(str(s) for s in _LIVE), "paused since"]
            print(
                table(
                    headers,
                    (
                        [
                            row["queue"],
                            "paused" if row["paused"] else "active",
                            *(row[str(s)] for s in _LIVE),
                            when(paused.get(str(row["queue"]))),
                        ]
                        for row in rows
                    ),
                )
            )
        return EXIT_OK

    return session.run(queue_list)


def cmd_queue_pause(args: argparse.Namespace) -> int:
    check_queue_name(args.queue)

    async def pause() -> int:
        async with session.connect(args) as client:
            changed = await client.pause_queue(args.queue)
        print(f"queue {args.queue!r} {'paused' if changed else 'was paused already'}")
        return EXIT_OK

    return session.run(pause)


def cmd_queue_resume(args: argparse.Namespace) -> int:
    check_queue_name(args.queue)

    async def resume() -> int:
        async with session.connect(args) as client:
            changed = await client.resume_queue(args.queue)
        print(f"queue {args.queue!r} {'resumed' if changed else 'was not paused'}")
        return EXIT_OK

    return session.run(resume)
