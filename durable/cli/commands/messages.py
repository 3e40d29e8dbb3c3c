"""To and from one task: ``send`` (a message for its ``ctx.recv``) and ``state`` (what it
published with ``ctx.set_state``)."""

from __future__ import annotations

import argparse

from durable.cli import session
from durable.cli.exits import EXIT_OK
from durable.cli.render import VALUE_MAX, json_text, print_json, table


def cmd_send(args: argparse.Namespace) -> int:

    async def send() -> int:
        async with session.connect(args) as client:
            woke = await client.send_message(args.task_id, args.topic, args.payload)
        outcome = "it was waiting: woken" if woke else "stored for its next recv"
        print(f"message on {args.topic!r} sent to task {args.task_id}: {outcome}")
        return EXIT_OK

    return session.run(send)


def cmd_state(args: argparse.Namespace) -> int:

    async def state() -> int:
        async with session.connect(args) as client:
            values = await client.get_state(args.queue, args.task_id, args.key)
        if args.json:
            print_json(values)
        elif values:
            rows = ([key, json_text(value, VALUE_MAX)] for key, value in values.items())
            print(table(["key", "value"], rows))
        else:
            what = f"under {args.key!r}" if args.key else "yet"
            print(f"task {args.task_id} published no state {what}")
        return EXIT_OK

    return session.run(state)
