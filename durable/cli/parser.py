"""The command line's grammar: every command, its flags and their help (``durable --help``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from durable import __version__
from durable.cli import arguments
from durable.cli.commands.browse import cmd_list
from durable.cli.commands.crons import (
    cmd_cron_add,
    cmd_cron_list,
    cmd_cron_pause,
    cmd_cron_remove,
    cmd_cron_resume,
)
from durable.cli.commands.dashboard import cmd_dashboard
from durable.cli.commands.failed import cmd_failed
from durable.cli.commands.messages import cmd_send, cmd_state
from durable.cli.commands.prune import cmd_prune
from durable.cli.commands.queues import cmd_queue_list, cmd_queue_pause, cmd_queue_resume
from durable.cli.commands.recovery import cmd_cancel, cmd_discard, cmd_replay, cmd_retry
from durable.cli.commands.show import cmd_show
from durable.cli.commands.tasks import cmd_cancel_by, cmd_emit, cmd_spawn, cmd_status
from durable.cli.commands.worker import cmd_migrate, cmd_worker
from durable.cli.exits import EXIT_USAGE
from durable.cli.logs import LOG_LEVELS
from durable.cli.options import add_spawn_flags, worker_help
from durable.protocol.cron import Missed
from durable.protocol.records import FailedWorkState, FailureReason, ReasonClass, TaskState

#: A command: the parsed arguments in, the exit code out.
Command = Callable[[argparse.Namespace], int]


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
    parser.add_argument("--version", action="version", version=f"durable {__version__}")
    _add_log_flags(parser, default=None)
    # --dsn and the log flags are accepted after the command too; SUPPRESS keeps a global one
    # when it is not
    common = _Parser(add_help=False)
    common.add_argument(
        "--dsn", default=argparse.SUPPRESS, help="PostgreSQL DSN (default: $DURABLE_DSN)"
    )
    _add_log_flags(common, default=argparse.SUPPRESS)
    as_json = _Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, handler: Command, help_: str, *parents: _Parser) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_, parents=[common, *parents])
        # a worker, a migration and the dashboard say what they do; the other commands only warn
        quiet = name not in ("worker", "migrate", "dashboard")
        sub.set_defaults(handler=handler, default_log_level="warning" if quiet else "info")
        return sub

    worker = add("worker", cmd_worker, "run a worker: claim and run tasks until SIGTERM/SIGINT")
    worker.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.tasks:app")
    worker.add_argument(
        "-q",
        "--queue",
        dest="queues",
        action="append",
        metavar="QUEUE",
        help="queue to claim from; repeat for more (default: every queue the app's tasks use)",
    )
    # the defaults are WorkerOptions's: a flag not given is not passed to run_worker
    worker.add_argument(
        "-c",
        "--concurrency",
        type=arguments.positive_int,
        metavar="N",
        help=worker_help("concurrency", "tasks run at once (default {default})"),
    )
    worker.add_argument(
        "--claim-timeout",
        type=arguments.positive_float,
        metavar="S",
        help=worker_help(
            "claim_timeout", "lease of a claim, renewed by heartbeats (default {default})"
        ),
    )
    worker.add_argument(
        "--grace-period",
        type=arguments.non_negative_float,
        metavar="S",
        help=worker_help(
            "grace_period",
            "on SIGTERM/SIGINT, how long running tasks may finish before their leases are "
            "released (default {default}); a second signal releases them at once",
        ),
    )
    worker.add_argument(
        "--poll-interval",
        type=arguments.positive_float,
        metavar="S",
        help=worker_help(
            "poll_interval",
            "how often to poll for work between notifications (default {default})",
        ),
    )
    worker.add_argument(
        "--metrics-port",
        type=arguments.port,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs durable[metrics]; "
        "0 picks a free port, logged as metrics.serving)",
    )
    worker.add_argument(
        "--metrics-host",
        metavar="HOST",
        help=worker_help(
            "metrics_host",
            "interface of the metrics endpoint (default {default}; 0.0.0.0 to be scraped "
            "from other machines or containers)",
        ),
    )
    worker.add_argument(
        "--metrics-interval",
        type=arguments.positive_float,
        metavar="S",
        help=worker_help(
            "metrics_interval", "how often the queue depth gauge is refreshed (default {default})"
        ),
    )
    worker.epilog = (
        "MODULE is imported with the current directory on sys.path. --dsn sets $DURABLE_DSN "
        "before the import, so it applies to an app created as Durable(); an app created with "
        "an explicit dsn keeps it."
    )

    migrate = add(
        "migrate", cmd_migrate, "apply pending schema migrations and print the schema state"
    )
    migrate.add_argument(
        "--move-history",
        action="store_true",
        help="then move every finished task to the history tables now, in batches (workers "
        "otherwise move them a batch at a time, every second)",
    )

    spawn = add("spawn", cmd_spawn, "spawn a task; print task_id, run_id, attempt, created")
    spawn.add_argument("task_name", metavar="TASK", help="the task's registered name")
    spawn.add_argument(
        "--params",
        type=arguments.json_value,
        default=None,
        metavar="JSON",
        help="params (default null)",
    )
    spawn.add_argument("-q", "--queue", default="default", help="queue (default 'default')")
    add_spawn_flags(spawn)

    tag = _Parser(add_help=False)
    tag.add_argument(
        "--tag",
        dest="tags",
        action="append",
        type=arguments.tag,
        metavar="T",
        help="only tasks carrying tag T; repeat to require several",
    )

    status = add("status", cmd_status, "count tasks per queue and state", as_json, tag)
    status.add_argument("-q", "--queue", help="only this queue")

    listing = add(
        "list",
        cmd_list,
        "list tasks newest first: by live state, queue, task name, tags, spawn time, id, "
        "idempotency key or params",
        as_json,
        tag,
    )
    listing.add_argument("-q", "--queue", help="only this queue")
    listing.add_argument("--task", dest="task_name", metavar="NAME", help="only this task name")
    listing.add_argument(
        "--state",
        choices=list(TaskState),
        help="only tasks in this state (a live task's is its run's: running, not pending)",
    )
    listing.add_argument(
        "--since",
        type=arguments.since,
        metavar="WHEN",
        help="only tasks spawned since WHEN: a duration back from now (30m, 6h) or an ISO time",
    )
    listing.add_argument(
        "--until",
        type=arguments.aware_datetime,
        metavar="ISO",
        help="only tasks spawned before this time",
    )
    listing.add_argument("--id", type=arguments.task_id, metavar="ID", help="one task by its id")
    listing.add_argument("--key", metavar="KEY", help="the task with this idempotency key")
    listing.add_argument(
        "--params",
        type=arguments.json_value,
        metavar="JSON",
        help="tasks whose params contain this JSON (e.g. '{\"user_id\": 7}')",
    )
    listing.add_argument(
        "--before",
        type=arguments.task_id,
        metavar="ID",
        help="the page after this task id (printed at the end of a full page)",
    )
    listing.add_argument(
        "--limit", type=arguments.positive_int, default=50, metavar="N", help="tasks per page"
    )

    work = _Parser(add_help=False)  # the failed-work filters
    work.add_argument("-q", "--queue", help="only this queue (with ID: the task's queue)")
    work.add_argument("--task", dest="task_name", metavar="NAME", help="only this task name")
    work.add_argument("--reason", choices=list(FailureReason), help="only this failure reason")
    work.add_argument("--reason-class", choices=list(ReasonClass), help="only this reason class")
    work.add_argument("--error-type", metavar="TYPE", help="only this error type, e.g. KeyError")
    work.add_argument(
        "--since",
        type=arguments.since,
        metavar="WHEN",
        help="only failures since WHEN: a duration back from now (30m, 6h, 7d) or an ISO time",
    )

    failed = add(
        "failed",
        cmd_failed,
        "failed work: grouped by reason x error type x task name, then each task, newest first",
        as_json,
        work,
        tag,
    )
    failed.add_argument("--state", choices=list(FailedWorkState), help="dead or retrying only")
    failed.add_argument("--limit", type=arguments.positive_int, default=50, metavar="N")

    bulk = _Parser(add_help=False)  # acting on what a filter matched
    bulk.add_argument(
        "task_id", nargs="?", type=arguments.task_id, metavar="ID", help="one task's id (a UUID)"
    )
    bulk.add_argument(
        "--all", action="store_true", help="every row of the failed work (no filter needed)"
    )
    bulk.add_argument(
        "--limit", type=arguments.positive_int, metavar="N", help="act on the N newest matches only"
    )
    bulk.add_argument(
        "--rate",
        type=arguments.rate,
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
            cmd_retry,
            "give a failed or cancelled task a new run, from its last checkpoint; with filters, "
            "every dead task of the failed work they match",
        ),
        (
            "cancel",
            cmd_cancel,
            "cancel a task that has not finished; with filters, every retrying task of the "
            "failed work they match",
        ),
        (
            "discard",
            cmd_discard,
            "end a task for good (a live one is cancelled): it leaves the failed work and can "
            "no longer be retried; with filters, every task of the failed work they match",
        ),
    ):
        sub = add(name, handler, help_, work, tag, bulk)
        sub.epilog = (
            "With filters and no ID the command lists what they match and changes nothing "
            "unless --yes is given."
        )
        if name == "retry":
            sub.add_argument(
                "--no-dependents",
                action="store_true",
                help="leave cancelled the dependents a task's end cancelled (by default a retry "
                "revives them, to wait for it again; the dry run lists them)",
            )

    replay = add(
        "replay",
        cmd_replay,
        "run a finished task again: from its last checkpoint, or from step --from-step",
    )
    replay.add_argument(
        "task_id", type=arguments.task_id, metavar="ID", help="the task's id (a UUID)"
    )
    replay.add_argument("-q", "--queue", help="the task's queue (default: any)")
    replay.add_argument(
        "--from-step",
        metavar="STEP",
        help="drop this step's checkpoint and every later one: the task runs again from it",
    )

    prune = add(
        "prune",
        cmd_prune,
        "delete finished tasks older than an age, with their runs and checkpoints, in batches",
    )
    prune.add_argument(
        "--older-than",
        type=arguments.duration,
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
        "--batch",
        type=arguments.positive_int,
        default=1000,
        metavar="N",
        help="tasks per transaction",
    )

    show = add(
        "show",
        cmd_show,
        "show a task, every attempt (run) with its error, its checkpoints",
        as_json,
    )
    show.add_argument(
        "task_id", type=arguments.task_id, metavar="ID", help="the task's id (a UUID)"
    )
    show.add_argument("-q", "--queue", help="the task's queue (default: any)")
    show.add_argument(
        "--tracebacks",
        action="store_true",
        help="every failed attempt's traceback (default: the latest one's)",
    )

    emit = add(
        "emit",
        cmd_emit,
        "emit an event: wake every task waiting for it (a later wait receives it at once)",
    )
    emit.add_argument("event", metavar="NAME", help="the event's name")
    emit.add_argument(
        "payload",
        nargs="?",
        type=arguments.json_value,
        default=None,
        metavar="PAYLOAD_JSON",
        help="the payload the waiters receive (default null)",
    )

    send = add(
        "send",
        cmd_send,
        "send a message to one task, for its ctx.recv(TOPIC): stored until received, in order",
    )
    send.add_argument("task_id", type=arguments.task_id, metavar="ID", help="the task's id")
    send.add_argument("topic", metavar="TOPIC", help="the topic its recv waits on")
    send.add_argument(
        "payload",
        nargs="?",
        type=arguments.json_value,
        default=None,
        metavar="PAYLOAD_JSON",
        help="the message (default null)",
    )

    state = add(
        "state", cmd_state, "show what a task published with ctx.set_state(KEY, VALUE)", as_json
    )
    state.add_argument("task_id", type=arguments.task_id, metavar="ID", help="the task's id")
    state.add_argument("key", nargs="?", metavar="KEY", help="only this key (default: every one)")
    state.add_argument("-q", "--queue", help="the task's queue (default: any)")

    dashboard = add(
        "dashboard",
        cmd_dashboard,
        "serve the web dashboard: queues, failed work, tasks; retry and cancel buttons",
    )
    dashboard.add_argument(
        "--port",
        type=arguments.port,
        default=8080,
        metavar="PORT",
        help="default 8080 (0: any free)",
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
        cmd_cancel_by,
        "cancel every unfinished task matching all the filters given (at least one)",
        tag,
    )
    cancel_by.add_argument("-q", "--queue", help="only tasks on this queue")
    cancel_by.add_argument("--task", dest="task_name", metavar="NAME", help="only this task name")

    def group(name: str, help_: str) -> Callable[..., argparse.ArgumentParser]:
        """A command with actions (``durable NAME ACTION``); returns how to add an action."""
        parent = commands.add_parser(name, help=help_, description=help_)
        actions = parent.add_subparsers(
            dest="action", metavar="ACTION", title="actions", required=True
        )

        def action(
            action_name: str, handler: Command, action_help: str, *parents: _Parser
        ) -> argparse.ArgumentParser:
            sub = actions.add_parser(
                action_name, help=action_help, description=action_help, parents=[common, *parents]
            )
            sub.set_defaults(handler=handler, default_log_level="warning")
            return sub

        return action

    queue = group("queue", "paused queues: list them, pause one (spawns are kept), resume it")
    queue("list", cmd_queue_list, "every queue with tasks or paused: live counts, paused", as_json)
    for name, handler, help_ in (
        ("pause", cmd_queue_pause, "stop claiming from QUEUE (it still accepts spawns)"),
        ("resume", cmd_queue_resume, "claim from QUEUE again"),
    ):
        queue(name, handler, help_).add_argument("queue", metavar="QUEUE")

    cron = group("cron", "cron schedules stored in the database: list, add, remove, pause, resume")
    cron_list = cron("list", cmd_cron_list, "every cron schedule, from code and added", as_json)
    cron_list.add_argument("-q", "--queue", help="only this queue's schedules")
    cron_add = cron(
        "add",
        cmd_cron_add,
        "add (or update) a schedule: spawn TASK at every slot of EXPR; the workers of its "
        "queue fire it",
    )
    cron_add.add_argument("name", metavar="NAME", help="the schedule's name (its identity)")
    cron_add.add_argument("expr", metavar="EXPR", help="five cron fields or @daily, ...")
    cron_add.add_argument("task_name", metavar="TASK", help="the task's registered name")
    cron_add.add_argument("-q", "--queue", required=True, help="the queue to spawn on")
    cron_add.add_argument(
        "--params", type=arguments.json_value, default=None, metavar="JSON", help="default null"
    )
    cron_add.add_argument(
        "--tz",
        dest="timezone",
        default="UTC",
        metavar="ZONE",
        help="the IANA time zone EXPR is read in (default UTC), e.g. Europe/Paris",
    )
    cron_add.add_argument(
        "--missed",
        choices=[str(m) for m in Missed],
        default=str(Missed.SKIP),
        help="slots missed while no worker ran: skip (default: only those at most a minute "
        "late), latest (also the newest one), all (every one, at most 100)",
    )
    add_spawn_flags(cron_add)
    for name, handler, help_ in (
        ("remove", cmd_cron_remove, "remove schedule NAME (the tasks it spawned stay)"),
        ("pause", cmd_cron_pause, "pause schedule NAME: it fires nothing until resumed"),
        ("resume", cmd_cron_resume, "resume schedule NAME from now on (no catch-up)"),
    ):
        cron(name, handler, help_).add_argument("name", metavar="NAME")
    return parser


def _add_log_flags(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        help="the level of durable's logs on stderr (default: info for worker, migrate and "
        "dashboard, warning for the others)",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        default=default,
        help="JSON lines or readable lines (default: json when stderr is not a terminal)",
    )
