"""The ``durable`` command: run a worker, migrate, spawn, and inspect and act on tasks.

    durable [--dsn DSN] COMMAND [...]        (also ``python -m durable``)

The database is ``--dsn`` > ``$DURABLE_DSN`` > the embedded PostgreSQL under ``$DURABLE_HOME``
(default ``./.durable``); when the embedded server is used, one line on stderr says where its data
lives. Output goes to stdout (aligned tables, or JSON with ``--json``); logs and errors to stderr.

Exit codes: 0 done; 1 a durable error, printed as ``durable: <ErrorClass>: <message>``; 2 bad usage
(arguments, JSON, ``MODULE:APP``), printed as one line; 130 interrupted before the worker started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import math
import os
import signal
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import anyio

from durable.app import Durable
from durable.cli.logs import configure_logging
from durable.client import Client
from durable.client.recovery import APPLIES_TO, Action, Change, recover
from durable.dashboard import serve
from durable.protocol.dsn import resolve_dsn
from durable.protocol.embedded import default_home
from durable.protocol.errors import DurableError, check_queue_name
from durable.protocol.failures import reason_class_counts
from durable.protocol.migrate import load_migrations
from durable.protocol.records import (
    FailedWork,
    FailedWorkState,
    FailureGroup,
    FailureReason,
    Progress,
    ReasonClass,
    Recovery,
    RunRecord,
    RunState,
    SpawnInfo,
    SpawnOptions,
    TaskRecord,
    TaskState,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Longest error message or JSON value shown in a table cell (``--json`` shows everything).
CELL_MAX = 60
VALUE_MAX = 200


#: How the store reads PostgreSQL's ``infinity``: a run that waits to be woken.
_NEVER = datetime.max.replace(tzinfo=UTC)

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A problem with what the user typed: one line on stderr, exit code 2."""


# --- entry point ----------------------------------------------------------------------------------


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
        _print_location(args.dsn)
        return EXIT_OK
    try:
        return command(args)
    except UsageError as exc:
        _err(f"durable {args.command}: error: {exc}")
        return EXIT_USAGE
    except DurableError as exc:
        _err(f"durable: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit code 2, as argparse does)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="durable",
        description="Durable asyncio tasks on PostgreSQL.",
        epilog=(
            "The database is --dsn, else $DURABLE_DSN, else the embedded PostgreSQL under "
            "$DURABLE_HOME (default ./.durable). Exit codes: 0 ok, 1 durable error, 2 bad usage."
        ),
    )
    parser.add_argument("--dsn", default=None, help="PostgreSQL DSN (default: $DURABLE_DSN)")
    # --dsn is accepted after the command too; SUPPRESS keeps a global --dsn when it is not
    common = _Parser(add_help=False)
    common.add_argument(
        "--dsn", default=argparse.SUPPRESS, help="PostgreSQL DSN (default: $DURABLE_DSN)"
    )
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, handler: Command, help_: str, *parents: _Parser) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_, parents=[common, *parents])
        sub.set_defaults(handler=handler)
        return sub

    worker = add("worker", _cmd_worker, "run a worker: claim and run tasks until SIGTERM/SIGINT")
    worker.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.tasks:app")
    worker.add_argument(
        "-q",
        "--queue",
        dest="queues",
        action="append",
        metavar="QUEUE",
        help="queue to claim from; repeat for more (default: every queue the app's tasks use)",
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        default=10,
        metavar="N",
        help="tasks run at once (default 10)",
    )
    worker.add_argument(
        "--claim-timeout",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="lease of a claim, renewed by heartbeats (default 60)",
    )
    worker.add_argument(
        "--grace-period",
        type=_non_negative_float,
        default=30.0,
        metavar="S",
        help="on SIGTERM/SIGINT, how long running tasks may finish before their leases are "
        "released (default 30); a second signal releases them at once",
    )
    worker.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs durable[metrics]; "
        "0 picks a free port, logged as metrics.serving)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="interface of the metrics endpoint (default 127.0.0.1; 0.0.0.0 to be scraped "
        "from other machines or containers)",
    )
    worker.add_argument(
        "--metrics-interval",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="how often the queue depth gauge is refreshed (default 5)",
    )
    worker.epilog = (
        "MODULE is imported with the current directory on sys.path. --dsn sets $DURABLE_DSN "
        "before the import, so it applies to an app created as Durable(); an app created with "
        "an explicit dsn keeps it."
    )

    add("migrate", _cmd_migrate, "apply pending schema migrations and print the schema state")

    spawn = add("spawn", _cmd_spawn, "spawn a task; print task_id, run_id, attempt, created")
    spawn.add_argument("task_name", metavar="TASK", help="the task's registered name")
    spawn.add_argument(
        "--params", type=_json_value, default=None, metavar="JSON", help="params (default null)"
    )
    spawn.add_argument("-q", "--queue", default="default", help="queue (default 'default')")
    spawn.add_argument("--idempotency-key", metavar="K", help="spawn once per key and queue")
    spawn.add_argument("--max-attempts", type=_positive_int, metavar="N")
    when = spawn.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_non_negative_float, metavar="S", help="start after S s")
    when.add_argument(
        "--at",
        type=_aware_datetime,
        metavar="ISO8601",
        help="start at this time, with its offset (e.g. 2030-01-01T09:00:00+02:00, or Z)",
    )
    spawn.add_argument("--priority", type=int, default=0, metavar="P", help="higher runs first")
    spawn.add_argument(
        "--tag", dest="tags", action="append", type=_tag, metavar="T", help="a tag; repeat for more"
    )
    spawn.add_argument(
        "--partition-key", metavar="K", help="claims take runs round-robin across partition keys"
    )
    spawn.add_argument(
        "--depends-on",
        dest="depends_on",
        action="append",
        type=_task_id,
        metavar="ID",
        help="start once task ID completed (cancelled if it fails or is cancelled); repeatable",
    )

    tag = _Parser(add_help=False)
    tag.add_argument(
        "--tag",
        dest="tags",
        action="append",
        type=_tag,
        metavar="T",
        help="only tasks carrying tag T; repeat to require several",
    )

    status = add("status", _cmd_status, "count tasks per queue and state", as_json, tag)
    status.add_argument("-q", "--queue", help="only this queue")

    work = _Parser(add_help=False)  # the failed-work filters
    work.add_argument("-q", "--queue", help="only this queue (with ID: the task's queue)")
    work.add_argument("--task", dest="task_name", metavar="NAME", help="only this task name")
    work.add_argument("--reason", choices=list(FailureReason), help="only this failure reason")
    work.add_argument("--reason-class", choices=list(ReasonClass), help="only this reason class")
    work.add_argument("--error-type", metavar="TYPE", help="only this error type, e.g. KeyError")
    work.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="only failures since WHEN: a duration back from now (30m, 6h, 7d) or an ISO time",
    )

    failed = add(
        "failed",
        _cmd_failed,
        "failed work: grouped by reason x error type x task name, then each task, newest first",
        as_json,
        work,
        tag,
    )
    failed.add_argument("--state", choices=list(FailedWorkState), help="dead or retrying only")
    failed.add_argument("--limit", type=_positive_int, default=50, metavar="N")

    bulk = _Parser(add_help=False)  # acting on what a filter matched
    bulk.add_argument(
        "task_id", nargs="?", type=_task_id, metavar="ID", help="one task's id (a UUID)"
    )
    bulk.add_argument(
        "--all", action="store_true", help="every row of the failed work (no filter needed)"
    )
    bulk.add_argument(
        "--limit", type=_positive_int, metavar="N", help="act on the N newest matches only"
    )
    bulk.add_argument(
        "--rate",
        type=_rate,
        metavar="N/s",
        help="at most N tasks per second (or N/m, N/h): try a fix on a few before the rest",
    )
    acting = bulk.add_mutually_exclusive_group()
    acting.add_argument(
        "--dry-run",
        action="store_true",
        help="only list what the filter matches (the default without ID and --yes)",
    )
    acting.add_argument("--yes", action="store_true", help="act on what the filter matches")
    for name, handler, help_ in (
        (
            "retry",
            _cmd_retry,
            "give a failed or cancelled task a new run, from its last checkpoint; with filters, "
            "every dead task of the failed work they match",
        ),
        (
            "cancel",
            _cmd_cancel,
            "cancel a task that has not finished; with filters, every retrying task of the "
            "failed work they match",
        ),
        (
            "discard",
            _cmd_discard,
            "end a task for good (a live one is cancelled): it leaves the failed work and can "
            "no longer be retried; with filters, every task of the failed work they match",
        ),
    ):
        sub = add(name, handler, help_, work, tag, bulk)
        sub.epilog = (
            "With filters and no ID the command lists what they match and changes nothing "
            "unless --yes is given."
        )

    replay = add(
        "replay",
        _cmd_replay,
        "run a finished task again: from its last checkpoint, or from step --from-step",
    )
    replay.add_argument("task_id", type=_task_id, metavar="ID", help="the task's id (a UUID)")
    replay.add_argument("-q", "--queue", help="the task's queue (default: any)")
    replay.add_argument(
        "--from-step",
        metavar="STEP",
        help="drop this step's checkpoint and every later one: the task runs again from it",
    )

    prune = add(
        "prune",
        _cmd_prune,
        "delete finished tasks older than an age, with their runs and checkpoints, in batches",
    )
    prune.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="e.g. 7d, 12h, 30m, or seconds",
    )
    prune.add_argument(
        "--state",
        dest="states",
        action="append",
        choices=[str(s) for s in TaskState if s.finished],
        help="only tasks that ended so; repeat for more (default: completed, failed, cancelled)",
    )
    prune.add_argument(
        "--task", dest="task_names", action="append", metavar="NAME", help="only this task name"
    )
    prune.add_argument(
        "--batch", type=_positive_int, default=1000, metavar="N", help="tasks per transaction"
    )

    show = add(
        "show",
        _cmd_show,
        "show a task, every attempt (run) with its error, its checkpoints",
        as_json,
    )
    show.add_argument("task_id", type=_task_id, metavar="ID", help="the task's id (a UUID)")
    show.add_argument("-q", "--queue", help="the task's queue (default: any)")
    show.add_argument(
        "--tracebacks",
        action="store_true",
        help="every failed attempt's traceback (default: the latest one's)",
    )

    emit = add(
        "emit",
        _cmd_emit,
        "emit an event: wake every task waiting for it (a later wait receives it at once)",
    )
    emit.add_argument("event", metavar="NAME", help="the event's name")
    emit.add_argument(
        "payload",
        nargs="?",
        type=_json_value,
        default=None,
        metavar="PAYLOAD_JSON",
        help="the payload the waiters receive (default null)",
    )

    dashboard = add(
        "dashboard",
        _cmd_dashboard,
        "serve the web dashboard: queues, failed work, tasks; retry and cancel buttons",
    )
    dashboard.add_argument(
        "--port", type=_port, default=8080, metavar="PORT", help="default 8080 (0: any free)"
    )
    dashboard.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to listen on (default 127.0.0.1; there is no login: keep it on loopback "
        "or behind an authenticating proxy)",
    )
    dashboard.add_argument(
        "--read-only", action="store_true", help="no retry or cancel: buttons hidden, POST refused"
    )

    cancel_by = add(
        "cancel-by",
        _cmd_cancel_by,
        "cancel every unfinished task matching all the filters given (at least one)",
        tag,
    )
    cancel_by.add_argument("-q", "--queue", help="only tasks on this queue")
    cancel_by.add_argument("--task", dest="task_name", metavar="NAME", help="only this task name")
    return parser


# --- argument types (their errors are one-line usage errors, exit code 2) ------------------------


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def _task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task id (a UUID): {text!r}") from None


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no timezone — add an offset, e.g. {text}Z or {text}+02:00"
        )
    return value


def _tag(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a tag must not be empty")
    return text


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``1w`` or a number of seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a duration (e.g. 7d, 12h, 30m, 45s): {text!r}")
    return value


def _since(text: str) -> datetime | float:
    """A duration back from now, or an ISO 8601 time with its offset."""
    try:
        return _duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        return _aware_datetime(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"not a duration (30m, 6h, 7d) nor an ISO time with offset: {text!r}"
        ) from None


def _rate(text: str) -> float:
    """``10/s``, ``600/m``, ``100/h`` or a number: actions per second."""
    number, _, unit = text.partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit)
    try:
        value = float(number) / per if per else float("nan")
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"not a rate (e.g. 10/s, 30/m): {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def _seconds(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise argparse.ArgumentTypeError(f"not a number of seconds {bound}: {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    return _seconds(text, allow_zero=True)


def _positive_float(text: str) -> float:
    return _seconds(text, allow_zero=False)


# --- commands ------------------------------------------------------------------------------------


def _cmd_worker(args: argparse.Namespace) -> int:
    if args.dsn:
        os.environ["DURABLE_DSN"] = args.dsn  # read when the module constructs Durable()
    app = load_app(args.app)
    configure_logging()

    async def work() -> int:
        async with app:
            _print_embedded(app.client)
            await app.run_worker(
                args.queues or None,
                args.concurrency,
                args.claim_timeout,
                grace_period=args.grace_period,
                metrics_port=args.metrics_port,
                metrics_host=args.metrics_host,
                metrics_interval=args.metrics_interval,
            )
        return EXIT_OK

    return _run(work)


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


def _cmd_migrate(args: argparse.Namespace) -> int:
    configure_logging(level="info")  # shows each schema.migrated on stderr

    async def migrate() -> int:
        async with _connect(args):  # connecting applies the pending migrations
            pass
        latest = load_migrations()[-1]
        print(f"schema up to date: version {latest.version} ({latest.name})")
        return EXIT_OK

    return _run(migrate)


def _cmd_spawn(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    try:
        options = SpawnOptions(
            idempotency_key=args.idempotency_key,
            max_attempts=args.max_attempts,
            delay=args.delay,
            at=args.at,
            priority=args.priority,
            tags=args.tags,
            partition_key=args.partition_key,
            depends_on=args.depends_on,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    async def spawn() -> int:
        async with _connect(args) as client:
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

    return _run(spawn)


def _cmd_status(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    if args.queue is not None:
        check_queue_name(args.queue)

    async def status() -> int:
        async with _connect(args) as client:
            counts = await client.queue_counts(args.tags)
        per_queue: dict[str, dict[str, int]] = {}
        for count in counts:
            if args.queue is None or count.queue == args.queue:
                row = per_queue.setdefault(count.queue, dict.fromkeys(TaskState, 0))
                row[count.state] += count.count
        rows = [{"queue": queue, **per_queue[queue]} for queue in sorted(per_queue)]
        if args.json:
            _print_json(rows)
        else:
            headers = ["queue", *TaskState]
            print(_table(headers, ([row[h] for h in headers] for row in rows)))
        return EXIT_OK

    return _run(status)


def _work_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The failed-work filters given on the command line (queue checked)."""
    if args.queue is not None:
        check_queue_name(args.queue)
    return {
        "queue": args.queue,
        "task_name": args.task_name,
        "reason": args.reason,
        "since": args.since,
        "reason_class": args.reason_class,
        "error_type": args.error_type,
        "tags": args.tags,
    }


def _cmd_failed(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    filters = _work_filters(args)

    async def failed() -> int:
        async with _connect(args) as client:
            rows = await client.failed_work(**filters, limit=args.limit, state=args.state)
            groups = await client.failure_groups(**filters, state=args.state)
        classes = reason_class_counts(rows)
        if args.json:
            _print_json(
                {
                    "groups": [dataclasses.asdict(g) for g in groups],
                    "reason_classes": {str(c): n for c, n in classes.items() if n},
                    "rows": [dataclasses.asdict(r) for r in rows],
                }
            )
            return EXIT_OK
        print(_failed_summary(rows, classes, args.limit))
        if not rows:
            return EXIT_OK
        print()
        print("groups (reason x error type x task name):")
        print(_groups_table(groups))
        print()
        print("tasks, newest failure first:")
        print(_failed_table(rows))
        return EXIT_OK

    return _run(failed)


def _failed_summary(
    rows: Sequence[FailedWork], classes: dict[ReasonClass, int], limit: int | None
) -> str:
    dead = sum(1 for r in rows if r.state is FailedWorkState.FAILED)
    more = (
        " (the newest; raise --limit for more)" if limit is not None and len(rows) == limit else ""
    )
    by_class = ", ".join(f"{c} {n}" for c, n in classes.items() if n) or "-"
    return (
        f"failed work: {_count(len(rows), 'task')}{more}: {dead} dead, "
        f"{len(rows) - dead} retrying; by reason class: {by_class}"
    )


def _groups_table(groups: Sequence[FailureGroup]) -> str:
    headers = ["count", "reason", "class", "error_type", "task_name", "queue", "first_seen"]
    headers.append("last_seen")
    return _table(
        headers,
        (
            [
                g.count,
                g.failure_reason,
                g.reason_class,
                g.error_type,
                g.task_name,
                g.queue,
                _when(g.first_seen),
                _when(g.last_seen),
            ]
            for g in groups
        ),
        indent=2,
    )


def _failed_table(rows: Sequence[FailedWork]) -> str:
    headers = ["failed_at", "queue", "task_name", "task_id", "state", "attempt", "reason"]
    headers += ["class", "error", "recovery"]
    return _table(
        headers,
        (
            [
                _when(row.failed_at),
                row.queue,
                row.task_name,
                row.task_id,
                row.state,
                f"{row.attempt}/{row.max_attempts}",
                row.failure_reason,
                row.reason_class,
                _error_text(row.error),
                _recovery_text(row),
            ]
            for row in rows
        ),
        indent=2,
    )


def _recovery_text(row: FailedWork) -> str:
    if row.recovery is Recovery.RETRY_FROM_CHECKPOINT:
        return f"retry from {row.last_checkpoint!r}"
    return str(row.recovery)


def _cmd_retry(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    if args.task_id is None:
        return _bulk(args, Action.RETRY)
    _one_task_only(args)

    async def retry() -> int:
        async with _connect(args) as client:
            before = await client.get_task(args.queue, args.task_id)
            info = await client.retry(before.queue, args.task_id)
        print(_restarted_text(before, info))
        return EXIT_OK

    return _run(retry)


def _restarted_text(before: TaskRecord, info: SpawnInfo) -> str:
    """What a retry or a replay changed: the task's state before, and its new run."""
    return (
        f"task {info.task_id} ({before.task_name} on {before.queue}): {before.state} -> "
        f"pending, new run {info.run_id} (attempt {info.attempt})"
    )


def _cmd_cancel(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    if args.task_id is None:
        return _bulk(args, Action.CANCEL)
    _one_task_only(args)

    async def cancel() -> int:
        async with _connect(args) as client:
            before = await client.get_task(args.queue, args.task_id)
            await client.cancel(before.queue, args.task_id)
        print(
            f"task {before.task_id} ({before.task_name} on {before.queue}): {before.state} -> "
            "cancelled"
        )
        return EXIT_OK

    return _run(cancel)


def _cmd_discard(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    if args.task_id is None:
        return _bulk(args, Action.DISCARD)
    _one_task_only(args)

    async def discard() -> int:
        async with _connect(args) as client:
            task = await client.get_task(args.queue, args.task_id)
            before = await client.discard(task.queue, args.task_id)
        ended = "" if before.finished else ", cancelled"
        print(
            f"task {task.task_id} ({task.task_name} on {task.queue}): {before} -> discarded"
            f"{ended} (it will not run again)"
        )
        return EXIT_OK

    return _run(discard)


def _one_task_only(args: argparse.Namespace) -> None:
    """With an ID, only -q may narrow it: filters and bulk options are for the other form."""
    given = [
        flag
        for flag, value in (
            ("--task", args.task_name),
            ("--reason", args.reason),
            ("--reason-class", args.reason_class),
            ("--error-type", args.error_type),
            ("--since", args.since),
            ("--tag", args.tags),
            ("--all", args.all),
            ("--limit", args.limit),
            ("--rate", args.rate),
            ("--dry-run", args.dry_run),
            ("--yes", args.yes),
        )
        if value
    ]
    if given:
        raise UsageError(f"give a task ID or filters, not both ({', '.join(given)} with an ID)")


_BULK_VERBS = {Action.RETRY: "retried", Action.CANCEL: "cancelled", Action.DISCARD: "discarded"}
_BULK_MATCH = {
    Action.RETRY: "dead tasks (a retry gives each a new run, from its last checkpoint)",
    Action.CANCEL: "retrying tasks (a cancel stops each from running again)",
    Action.DISCARD: "tasks (a discard ends each for good: a live one is cancelled)",
}


def _bulk(args: argparse.Namespace, action: Action) -> int:
    """Retry, cancel or discard the failed work a filter matches: a dry run unless --yes."""
    filters = _work_filters(args)
    if not args.all and not any(value for value in filters.values()):
        raise UsageError(
            "give a task ID, or filters (-q, --task, --reason, --reason-class, --error-type, "
            "--since, --tag), or --all"
        )
    states = APPLIES_TO[action]
    state = next(iter(states)) if len(states) == 1 else None

    async def bulk() -> int:
        async with _connect(args) as client:
            rows = await client.failed_work(**filters, limit=args.limit, state=state)
            if not args.yes:
                print(f"dry run: {_count(len(rows), 'match', 'matches')}: {_BULK_MATCH[action]}")
                if rows:
                    print(_failed_table(rows))
                    print(f"nothing changed: add --yes to {action} them (--rate N/s to throttle)")
                return EXIT_OK
            errors = 0
            async for change in recover(client, rows, action, rate=args.rate):
                print(_change_text(change), flush=True)
                errors += not change.changed
        done = len(rows) - errors
        print(f"{_BULK_VERBS[action]} {_count(done, 'task')}; {errors} not changed")
        return EXIT_ERROR if errors else EXIT_OK

    return _run(bulk)


def _change_text(change: Change) -> str:
    head = f"task {change.task_id} ({change.task_name} on {change.queue}): "
    if change.error is not None:
        return head + f"not changed: {change.error}"
    text = head + f"{change.before} -> {change.after}"
    if change.run_id is not None:
        text += f", new run {change.run_id} (attempt {change.attempt})"
    return text


def _cmd_replay(args: argparse.Namespace) -> int:
    configure_logging(level="warning")

    async def replay() -> int:
        async with _connect(args) as client:
            before = await client.get_task(args.queue, args.task_id)
            kept = await client.get_checkpoints(before.queue, args.task_id)
            info = await client.replay(before.queue, args.task_id, args.from_step)
        if args.from_step is not None:
            start = f"from step {args.from_step!r}"
        elif kept:
            start = f"after its last checkpoint {kept[-1].step_name!r}"
        else:
            start = "from the start (no checkpoint)"
        print(f"{_restarted_text(before, info)}, {start}")
        return EXIT_OK

    return _run(replay)


def _cmd_prune(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    states = args.states or [str(s) for s in TaskState if s.finished]

    async def prune() -> int:
        async with _connect(args) as client:
            counts = {
                state: await client.prune_tasks(
                    args.older_than, [state], batch=args.batch, task_names=args.task_names
                )
                for state in states
            }
            rows = await client.prune_bookkeeping(args.older_than, batch=args.batch)
        each = ", ".join(f"{n} {state}" for state, n in counts.items())
        print(
            f"pruned {_count(sum(counts.values()), 'task')} that ended more than "
            f"{_age_text(args.older_than)} ago ({each}), with their runs and checkpoints; "
            f"{rows} old rows of events, partition turns and stopped workers"
        )
        return EXIT_OK

    return _run(prune)


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _cmd_dashboard(args: argparse.Namespace) -> int:
    configure_logging(level="info")

    async def dashboard() -> int:
        # each open browser polls every second: a few connections
        async with Client(args.dsn, pool_size=4) as client, anyio.create_task_group() as tg:
            _print_embedded(client)
            try:
                port = await tg.start(
                    functools.partial(
                        serve, client, host=args.host, port=args.port, read_only=args.read_only
                    )
                )
            except OSError as exc:
                _err(f"durable: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
                return EXIT_ERROR
            host = f"[{args.host}]" if ":" in args.host else args.host
            mode = " (read-only)" if args.read_only else ""
            _err(f"durable: dashboard on http://{host}:{port}/{mode}; Ctrl-C stops it")
        return EXIT_OK

    try:
        return _run(dashboard)
    except KeyboardInterrupt:  # Ctrl-C is how a dashboard stops
        return EXIT_OK


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {text!r}")
    return value


def _cmd_emit(args: argparse.Namespace) -> int:
    configure_logging(level="warning")

    async def emit() -> int:
        async with _connect(args) as client:
            woken = await client.emit_event(args.event, args.payload)
        print(f"event {args.event!r} emitted: {_count(woken, 'waiting task')} woken")
        return EXIT_OK

    return _run(emit)


def _cmd_cancel_by(args: argparse.Namespace) -> int:
    configure_logging(level="warning")
    if args.queue is None and args.task_name is None and not args.tags:
        raise UsageError("give at least one filter: -q QUEUE, --task NAME or --tag T")
    if args.queue is not None:
        check_queue_name(args.queue)

    async def cancel_by() -> int:
        async with _connect(args) as client:
            count = await client.cancel_by(args.queue, args.task_name, args.tags)
        print(f"{_count(count, 'task')} cancelled")
        return EXIT_OK

    return _run(cancel_by)


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def _cmd_show(args: argparse.Namespace) -> int:
    configure_logging(level="warning")

    async def show() -> int:
        async with _connect(args) as client:
            task = await client.get_task(args.queue, args.task_id)
            checkpoints = await client.get_checkpoints(task.queue, task.task_id)
        if args.json:
            doc = dataclasses.asdict(task)
            doc["checkpoints"] = [dataclasses.asdict(c) for c in checkpoints]
            _print_json(doc)
            return EXIT_OK
        print(_task_text(task))
        print()
        print("runs:")
        print(
            _table(
                [
                    "attempt",
                    "state",
                    "worker",
                    "started",
                    "finished",
                    "available",
                    "reason",
                    "error",
                ],
                (
                    [
                        run.attempt,
                        run.state,
                        run.claimed_by,
                        _when(run.started_at),
                        _when(run.finished_at),
                        _available_text(run),
                        run.failure_reason,
                        _error_text(run.error),
                    ]
                    for run in task.runs
                ),
                indent=2,
            )
        )
        if errors := _errors_text(task, every=args.tracebacks):
            print()
            print("errors:")
            print(errors)
        print()
        print("checkpoints:")
        print(
            _table(
                ["step", "run_id", "created", "value"],
                (
                    [c.step_name, c.run_id, _when(c.created_at), _json_text(c.value, CELL_MAX)]
                    for c in checkpoints
                ),
                indent=2,
            )
        )
        return EXIT_OK

    return _run(show)


def _errors_text(task: TaskRecord, *, every: bool) -> str:
    """Each failed attempt's error in full; the traceback of the latest (of each: ``every``)."""
    failed = [run for run in task.runs if run.error or run.failure_reason]
    lines: list[str] = []
    for i, run in enumerate(failed):
        error = run.error or {}
        message = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
        lines.append(
            f"  attempt {run.attempt} {run.failure_reason or run.state} on {run.claimed_by or '-'}"
            f" at {_when(run.finished_at) or '-'}: {message or '-'}"
        )
        traceback = error.get("traceback")
        if traceback and (every or i == len(failed) - 1):
            lines += ["    " + line for line in str(traceback).rstrip().splitlines()]
    return "\n".join(lines)


def _task_text(task: TaskRecord) -> str:
    failure = task.failure
    fields: list[tuple[str, object]] = [
        ("task_id", task.task_id),
        ("task_name", task.task_name),
        ("queue", task.queue),
        ("state", task.state),
        ("attempt", f"{task.attempt}/{task.max_attempts}"),
        ("idempotency_key", task.idempotency_key),
        ("created_at", _when(task.created_at)),
        ("params", _json_text(task.params, VALUE_MAX)),
        ("headers", _json_text(task.headers, VALUE_MAX) if task.headers else None),
        (
            "result",
            _json_text(task.result, VALUE_MAX) if task.state is TaskState.COMPLETED else None,
        ),
        ("failure", f"{failure.reason} {failure.message}".strip() if failure else None),
    ]
    if task.discarded_at is not None:
        fields.append(("discarded_at", _when(task.discarded_at)))
    # the fields of the features a task may not use: shown only when set
    optional: list[tuple[str, object]] = [
        ("tags", ", ".join(task.tags)),
        ("partition_key", task.partition_key),
        ("parent_task_id", task.parent_task_id),
        (
            "scheduled_at",
            _when(task.scheduled_at) if task.scheduled_at != task.created_at else None,
        ),
        ("depends_on", ", ".join(str(d) for d in task.depends_on)),
        ("pending_dependencies", ", ".join(str(d) for d in task.pending_dependencies)),
        ("waiting_for", "; ".join(_wait_text(wait) for wait in task.waiting_for)),
        ("wakes_at", _wakes_at(task)),
        ("progress", _progress_text(task.progress) if task.progress else None),
    ]
    fields += [(name, value) for name, value in optional if value]
    return _table(["field", "value"], fields, header=False)


def _wait_text(wait: dict[str, Any]) -> str:
    """One thing a parked task waits for: an event or another task, and until when."""
    if wait.get("event_name") is not None:
        what = f"event {wait['event_name']!r}"
    else:
        what = f"task {wait.get('child_task_id')}"
    timeout = wait.get("timeout_at")
    until = f"timeout {_when(datetime.fromisoformat(timeout))}" if timeout else "no timeout"
    return f"{what} (step {wait.get('step_name')!r}, {until})"


def _wakes_at(task: TaskRecord) -> str | None:
    """When a task in a durable sleep wakes (a wait shows its timeout in ``waiting_for``)."""
    if task.state is not TaskState.SLEEPING or task.waiting_for:
        return None
    sleeping = [run for run in task.runs if run.state is RunState.SLEEPING]
    return _available_text(sleeping[-1]) if sleeping else None


def _available_text(run: RunRecord) -> str | None:
    """When a run waiting to be claimed may start; ``when woken`` if only an event, a child's
    end or its dependencies can make it claimable."""
    if run.state not in (RunState.PENDING, RunState.SLEEPING):
        return None
    if run.available_at == _NEVER:
        return "when woken"
    return _when(run.available_at)


def _progress_text(progress: Progress) -> str:
    text = f"{progress.pct:g}%"
    if progress.detail is not None:
        detail = progress.detail
        text += " " + (detail if isinstance(detail, str) else _json_text(detail, CELL_MAX))
    if progress.at is not None:
        text += f" (at {_when(progress.at)})"
    return _clip(text, VALUE_MAX)


# --- plumbing ------------------------------------------------------------------------------------


def _run(fn: Callable[[], Awaitable[int]]) -> int:
    """``anyio.run`` that surfaces a durable error raised inside a task group as itself."""
    try:
        return anyio.run(fn)
    except BaseExceptionGroup as group:
        matched, rest = group.split(DurableError)
        if matched is None or rest is not None:
            raise
        leaf: BaseException = matched
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


@contextlib.asynccontextmanager
async def _connect(args: argparse.Namespace) -> AsyncIterator[Client]:
    async with Client(args.dsn, pool_size=2) as client:
        _print_embedded(client)
        yield client


def _print_embedded(client: Client) -> None:
    if (home := client.embedded_home) is not None:
        _err(f"durable: using embedded PostgreSQL, data in {home}")


def _print_location(dsn: str | None) -> None:
    """Where commands would connect, without connecting."""
    resolved = resolve_dsn(dsn)
    if resolved is None:
        _err(f"durable: using embedded PostgreSQL, data in {default_home()}")
        return
    parts = urllib.parse.urlsplit(resolved)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    _err(f"durable: using PostgreSQL at {where} ({'--dsn' if dsn else '$DURABLE_DSN'})")


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def _print_json(value: object) -> None:
    print(json.dumps(value, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _when(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else None


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    text = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
    return _clip(text, CELL_MAX)


def _json_text(value: object, limit: int) -> str:
    return _clip(json.dumps(value, default=_json_default), limit)


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    indent: int = 0,
    header: bool = True,
) -> str:
    """Plain aligned columns; numbers right-aligned, None shown as ``-``."""
    body = [list(row) for row in rows]
    numeric = [
        bool(body) and all(isinstance(row[i], int) and not isinstance(row[i], bool) for row in body)
        for i in range(len(headers))
    ]
    cells = [[str(h) for h in headers]] if header else []
    cells += [["-" if value is None else str(value) for value in row] for row in body]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = " " * indent
    return "\n".join(
        pad
        + "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    )
