"""``durable dashboard``: serve the web console until Ctrl-C (``durable[dashboard]``)."""

from __future__ import annotations

import argparse
import functools

import anyio

from durable.cli import session
from durable.cli.exits import EXIT_ERROR, EXIT_OK
from durable.cli.render import err
from durable.client import Client


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from durable.dashboard import serve  # Starlette and uvicorn: the extra's
    except ImportError as exc:
        err(f"durable: the dashboard needs {exc.name} — pip install 'durable[dashboard]'")
        return EXIT_ERROR

    async def dashboard() -> int:
        # each open page holds one LISTEN connection of its own (its event stream)
        async with Client(args.dsn, pool_size=4) as client, anyio.create_task_group() as tg:
            session.print_embedded(client)
            try:
                port = await tg.start(
                    functools.partial(
                        serve, client, host=args.host, port=args.port, read_only=args.read_only
                    )
                )
            except OSError as exc:
                err(f"durable: cannot listen on {args.host}:{args.port}: {_reason(exc)}")
                return EXIT_ERROR
            host = f"[{args.host}]" if ":" in args.host else args.host
            mode = " (read-only)" if args.read_only else ""
            err(f"durable: dashboard on http://{host}:{port}/{mode}; Ctrl-C stops it")
        return EXIT_OK

    try:
        return session.run(dashboard)
    except KeyboardInterrupt:  # Ctrl-C is how a dashboard stops
        return EXIT_OK


def _reason(exc: OSError) -> str:
    import os

    return os.strerror(exc.errno) if exc.errno else str(exc)
