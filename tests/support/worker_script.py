"""What a test app runs as a worker script, the other end of :mod:`support.processes`::

    python worker_app.py [-q QUEUE]... [-c N] [--claim-timeout S] [--grace-period S]
                         [--poll-interval S] [--worker-id ID] [--metrics-port PORT]

runs ``app.run_worker(...)`` on ``$DURABLE_DSN`` until SIGTERM/SIGINT (drain) or SIGKILL, logging
JSON lines to stderr. Each option falls back to an environment variable (``WORKER_QUEUES``
comma-separated, ``WORKER_CONCURRENCY``, ``WORKER_CLAIM_TIMEOUT``, ``WORKER_GRACE_PERIOD``,
``WORKER_POLL_INTERVAL``, ``WORKER_ID``), then to the app's default (:class:`Settings`). With
``--metrics-port`` (0: a free one, logged as ``metrics.serving``) the worker serves its metrics,
``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

import durable
from durable.cli.logs import configure_logging
from support.database import SidePool


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How a test app's worker runs; an app's defaults are one of these."""

    queues: tuple[str, ...] = ("default",)
    concurrency: int = 4
    claim_timeout: float = 2.0
    grace_period: float = 5.0
    poll_interval: float = 0.2
    worker_id: str | None = None
    metrics_port: int | None = None


DEFAULTS = Settings()

#: The numeric settings: their flags and type. Each falls back to ``WORKER_<NAME>``.
_NUMBERS: dict[str, tuple[tuple[str, ...], type[int] | type[float]]] = {
    "concurrency": (("-c", "--concurrency"), int),
    "claim_timeout": (("--claim-timeout",), float),
    "grace_period": (("--grace-period",), float),
    "poll_interval": (("--poll-interval",), float),
}


def parse_settings(
    argv: Sequence[str] | None = None, defaults: Settings = DEFAULTS, description: str = ""
) -> Settings:
    """The worker's settings from ``argv`` (default: the command line), else the environment,
    else ``defaults``."""
    parser = argparse.ArgumentParser(description=description or None)
    parser.add_argument("-q", "--queue", action="append", dest="queues")
    for name, (flags, kind) in _NUMBERS.items():
        fallback = os.environ.get(f"WORKER_{name.upper()}") or getattr(defaults, name)
        parser.add_argument(*flags, dest=name, type=kind, default=kind(fallback))
    parser.add_argument("--worker-id", default=os.environ.get("WORKER_ID") or defaults.worker_id)
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port)
    args = parser.parse_args(argv)
    queues = args.queues or (os.environ.get("WORKER_QUEUES") or ",".join(defaults.queues)).split(
        ","
    )
    numbers = {name: getattr(args, name) for name in _NUMBERS}
    return Settings(
        queues=tuple(queues), worker_id=args.worker_id, metrics_port=args.metrics_port, **numbers
    )


async def serve(app: durable.Durable, settings: Settings, side: SidePool | None = None) -> None:
    """Run the worker (with ``side`` open on the same database, for the tasks' records)."""
    async with contextlib.AsyncExitStack() as stack:
        if side is not None:
            await stack.enter_async_context(side.open(os.environ["DURABLE_DSN"]))
        await app.run_worker(
            settings.queues,
            settings.concurrency,
            settings.claim_timeout,
            grace_period=settings.grace_period,
            poll_interval=settings.poll_interval,
            worker_id=settings.worker_id,
            metrics_port=settings.metrics_port,
            metrics_interval=0.2,
        )


def run_worker_script(
    app: durable.Durable,
    *,
    defaults: Settings = DEFAULTS,
    side: SidePool | None = None,
    description: str = "",
) -> None:
    """The ``__main__`` of a test app: its worker as the command line says, JSON logs on stderr."""
    settings = parse_settings(defaults=defaults, description=description)
    configure_logging(json=True)
    anyio.run(serve, app, settings, side)
