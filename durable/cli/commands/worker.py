"""``durable worker`` (import the app, run a worker until a signal) and ``durable migrate``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from durable.app import Durable
from durable.cli import session
from durable.cli.exits import EXIT_OK, UsageError
from durable.cli.options import worker_options
from durable.protocol.migrate import load_migrations


def cmd_worker(args: argparse.Namespace) -> int:
    if args.dsn:
        os.environ["DURABLE_DSN"] = args.dsn  # read when the module constructs Durable()
    app = load_app(args.app)

    async def work() -> int:
        async with app:
            session.print_embedded(app.client)
            await app.run_worker(args.queues or None, **worker_options(args))
        return EXIT_OK

    return session.run(work)


def load_app(spec: str) -> Durable:
    """Import ``MODULE:APP`` (``APP`` may be dotted) with the current directory importable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{spec!r} is not MODULE:APP — e.g. myproject.tasks:app")
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise UsageError(f"no module named {module_name!r} (looked in {cwd} too)") from None
        raise  # the module itself failed to import something: its traceback helps
    target: object = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(target, Durable):
        raise UsageError(f"{spec} is a {type(target).__name__}, not a durable.Durable")
    return target


def cmd_migrate(args: argparse.Namespace) -> int:

    async def migrate() -> int:
        async with session.connect(args) as client:  # connecting applies the migrations
            latest = load_migrations()[-1]
            print(f"schema up to date: version {latest.version} ({latest.name})")
            if getattr(args, "move_history", False):
                moved = await client.move_all_to_history()
                print(f"moved {moved} finished tasks to history")
        return EXIT_OK

    return session.run(migrate)
