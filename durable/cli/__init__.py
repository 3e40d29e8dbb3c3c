"""The ``durable`` command: run a worker, migrate, spawn, and inspect and act on tasks.

    durable [--dsn DSN] COMMAND [...]        (also ``python -m durable``)

The database is ``--dsn`` > ``$DURABLE_DSN`` > the embedded PostgreSQL under ``$DURABLE_HOME``
(default ``./.durable``); when the embedded server is used, one line on stderr says where its data
lives. Output goes to stdout (aligned tables, or JSON with ``--json``); logs and errors to stderr.

Exit codes: 0 done; 1 a durable error, printed as ``durable: <ErrorClass>: <message>``; 2 bad usage
(arguments, JSON, ``MODULE:APP``), printed as one line; 130 interrupted before the worker started.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

from durable.cli.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from durable.cli.logs import configure_logging
from durable.cli.parser import Command, build_parser
from durable.cli.render import err
from durable.cli.session import print_location
from durable.protocol.errors import DurableError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    # SIGTERM before a worker installs its drain handler: exit normally, so that atexit
    # releases the embedded server (the worker replaces this with its own handler)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "handler", None)
    if command is None:
        parser.print_help()
        print_location(args.dsn)
        return EXIT_OK
    # before the command imports anything of the user's: an app that sets up logging itself
    # when imported keeps its own setup
    configure_logging(level=args.log_level or args.default_log_level, log_format=args.log_format)
    try:
        return command(args)
    except UsageError as exc:
        err(f"durable {args.command}: error: {exc}")
        return EXIT_USAGE
    except DurableError as exc:
        err(f"durable: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
