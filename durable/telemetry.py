"""Structured logs. The library only calls ``structlog.get_logger("durable")``; the CLI configures.

Events, one per transition, each with ``queue``, ``task_name``, ``task_id``, ``run_id`` and
``attempt``:
``task.spawned``, ``run.claimed``, ``run.completed``, ``run.failed`` (with ``reason``),
``run.retry_scheduled``, ``task.dead``, ``task.cancelled``, ``lease.lost``; and
``worker.started`` / ``worker.stopped``.

Operators' actions: ``task.replayed``, ``task.discarded``, ``task.recovered`` and
``task.recovery_skipped`` (bulk recovery, with ``action``); ``retention.pruned`` /
``retention.failed`` (a worker's pruning); ``metrics.serving`` and ``metrics.*_failed`` (the
Prometheus endpoint); ``dashboard.started`` / ``dashboard.stopped`` /
``dashboard.request_failed``.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import orjson
import structlog

if TYPE_CHECKING:
    from durable.records import Claim

log = structlog.get_logger("durable")


def run_fields(claim: Claim) -> dict[str, Any]:
    """The keys every run event carries: queue, task_name, task_id, run_id, attempt."""
    return {
        "queue": claim.queue,
        "task_name": claim.task_name,
        "task_id": str(claim.task_id),
        "run_id": str(claim.run_id),
        "attempt": claim.attempt,
    }


def configure_logging(*, json: bool | None = None, level: str = "info") -> None:
    """The production recipe, for the CLI: JSON lines when not on a terminal, else readable."""
    if json is None:
        json = not sys.stderr.isatty()
    # asyncpg's pool logs a traceback each time it fails to refill during an outage; the
    # worker's own db.unavailable / db.reconnected events say it once, in structured form
    logging.getLogger("asyncpg.pool").setLevel(logging.CRITICAL)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=orjson.dumps)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer)
        if json
        else structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
