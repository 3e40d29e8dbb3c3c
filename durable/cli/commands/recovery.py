"""Acting on failed work: ``retry``, ``cancel`` and ``discard`` of one task or of what filters
match (a dry run unless ``--yes``), and ``replay`` of a finished task."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from durable.cli import session
from durable.cli.commands.failed import failed_table, work_filters
from durable.cli.exits import EXIT_ERROR, EXIT_OK, UsageError
from durable.cli.render import count, table
from durable.client.recovery import APPLIES_TO, Action, Change, recover
from durable.protocol.records import Dependent, SpawnInfo, TaskRecord


def cmd_retry(args: argparse.Namespace) -> int:
    if args.task_id is None:
        return _bulk(args, Action.RETRY)
    _one_task_only(args)

    async def retry() -> int:
        async with session.connect(args) as client:
            before = await client.get_task(args.queue, args.task_id)
            dependents = await client.revivable_dependents([args.task_id])
            info = await client.retry(
                before.queue, args.task_id, revive_dependents=not args.no_dependents
            )
        print(_restarted_text(before, info))
        names = {d.task_id: d for d in dependents}
        for revived in info.revived:
            print("  " + _revived_text(revived, names.get(revived.task_id)))
        return EXIT_OK

    return session.run(retry)


def _revived_text(info: SpawnInfo, dependent: Dependent | None) -> str:
    """A dependent a retry revived: pending again, waiting for its dependencies."""
    what = f" ({dependent.task_name} on {dependent.queue})" if dependent else ""
    return (
        f"revived dependent {info.task_id}{what}: cancelled -> pending, new run {info.run_id}, "
        "waiting for its dependencies"
    )


def _restarted_text(before: TaskRecord, info: SpawnInfo) -> str:
    """What a retry or a replay changed: the task's state before, and its new run."""
    return (
        f"task {info.task_id} ({before.task_name} on {before.queue}): {before.state} -> "
        f"pending, new run {info.run_id} (attempt {info.attempt})"
    )


def cmd_cancel(args: argparse.Namespace) -> int:
    if args.task_id is None:
        return _bulk(args, Action.CANCEL)
    _one_task_only(args)

    async def cancel() -> int:
        async with session.connect(args) as client:
            before = await client.get_task(args.queue, args.task_id)
            await client.cancel(before.queue, args.task_id)
        print(
            f"task {before.task_id} ({before.task_name} on {before.queue}): {before.state} -> "
            "cancelled"
        )
        return EXIT_OK

    return session.run(cancel)


def cmd_discard(args: argparse.Namespace) -> int:
    if args.task_id is None:
        return _bulk(args, Action.DISCARD)
    _one_task_only(args)

    async def discard() -> int:
        async with session.connect(args) as client:
            task = await client.get_task(args.queue, args.task_id)
            before = await client.discard(task.queue, args.task_id)
        ended = "" if before.finished else ", cancelled"
        print(
            f"task {task.task_id} ({task.task_name} on {task.queue}): {before} -> discarded"
            f"{ended} (it will not run again)"
        )
        return EXIT_OK

    return session.run(discard)


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
    filters = work_filters(args)
    if not args.all and not any(value for value in filters.values()):
        raise UsageError(
            "give a task ID, or filters (-q, --task, --reason, --reason-class, --error-type, "
            "--since, --tag), or --all"
        )
    states = APPLIES_TO[action]
    state = next(iter(states)) if len(states) == 1 else None

    revive = action is Action.RETRY and not args.no_dependents

    async def bulk() -> int:
        async with session.connect(args) as client:
            rows = await client.failed_work(**filters, limit=args.limit, state=state)
            if not args.yes:
                print(f"dry run: {count(len(rows), 'match', 'matches')}: {_BULK_MATCH[action]}")
                if rows:
                    print(failed_table(rows))
                if rows and revive:
                    dependents = await client.revivable_dependents([r.task_id for r in rows])
                    print(_dependents_text(dependents))
                if rows:
                    print(f"nothing changed: add --yes to {action} them (--rate N/s to throttle)")
                return EXIT_OK
            errors = 0
            async for change in recover(
                client, rows, action, rate=args.rate, revive_dependents=revive
            ):
                print(_change_text(change), flush=True)
                for revived in change.revived:
                    print("  " + _revived_text(revived, None), flush=True)
                errors += not change.changed
        done = len(rows) - errors
        print(f"{_BULK_VERBS[action]} {count(done, 'task')}; {errors} not changed")
        return EXIT_ERROR if errors else EXIT_OK

    return session.run(bulk)


def _dependents_text(dependents: Sequence[Dependent]) -> str:
    """What the dry run of a retry says of the dependents it would revive."""
    if not dependents:
        return "no dependent to revive: no match's end cancelled a dependent"
    head = (
        f"and {count(len(dependents), 'dependent')} their ends cancelled, revived with them, "
        "each waiting for its dependencies again (--no-dependents to leave them cancelled):"
    )
    rows = ([d.queue, d.task_name, d.task_id, d.dependency] for d in dependents)
    return head + "\n" + table(["queue", "task_name", "task_id", "cancelled by"], rows, indent=2)


def _change_text(change: Change) -> str:
    head = f"task {change.task_id} ({change.task_name} on {change.queue}): "
    if change.error is not None:
        return head + f"not changed: {change.error}"
    text = head + f"{change.before} -> {change.after}"
    if change.run_id is not None:
        text += f", new run {change.run_id} (attempt {change.attempt})"
    if change.revived_with is not None:
        text += f": revived with its dependency {change.revived_with}"
    return text


def cmd_replay(args: argparse.Namespace) -> int:

    async def replay() -> int:
        async with session.connect(args) as client:
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

    return session.run(replay)
