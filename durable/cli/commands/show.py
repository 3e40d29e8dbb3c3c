"""``durable show``: a task, every attempt (run) with its code version and error, the state it
published, its checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime
from typing import Any

from durable.cli import session
from durable.cli.exits import EXIT_OK
from durable.cli.render import (
    CELL_MAX,
    VALUE_MAX,
    clip,
    error_text,
    json_text,
    print_json,
    table,
    when,
)
from durable.protocol.records import Progress, RunRecord, RunState, TaskRecord, TaskState

#: How the store reads PostgreSQL's ``infinity``: a run that waits to be woken.
_NEVER = datetime.max.replace(tzinfo=UTC)


def cmd_show(args: argparse.Namespace) -> int:

    async def show() -> int:
        async with session.connect(args) as client:
            task = await client.get_task(args.queue, args.task_id)
            checkpoints = await client.get_checkpoints(task.queue, task.task_id)
            published = await client.get_state(task.queue, task.task_id)
        if args.json:
            doc = dataclasses.asdict(task)
            doc["published_state"] = published
            doc["checkpoints"] = [dataclasses.asdict(c) for c in checkpoints]
            print_json(doc)
            return EXIT_OK
        print(_task_text(task))
        print()
        print("runs:")
        print(
            table(
                [
                    "attempt",
                    "state",
                    "worker",
                    "version",
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
                        run.code_version,
                        when(run.started_at),
                        when(run.finished_at),
                        _available_text(run),
                        # a reserved run reaped free: its handler never started, no attempt spent
                        f"{run.failure_reason}, not started"
                        if run.reserved and run.failure_reason
                        else run.failure_reason,
                        error_text(run.error),
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
        if published:
            print()
            print("published state:")
            rows = ([key, json_text(value, VALUE_MAX)] for key, value in published.items())
            print(table(["key", "value"], rows, indent=2))
        print()
        print("checkpoints:")
        print(
            table(
                ["step", "run_id", "created", "value"],
                (
                    [c.step_name, c.run_id, when(c.created_at), json_text(c.value, CELL_MAX)]
                    for c in checkpoints
                ),
                indent=2,
            )
        )
        return EXIT_OK

    return session.run(show)


def _errors_text(task: TaskRecord, *, every: bool) -> str:
    """Each failed attempt's error in full; the traceback of the latest (of each: ``every``)."""
    failed = [run for run in task.runs if run.error or run.failure_reason]
    lines: list[str] = []
    for i, run in enumerate(failed):
        error = run.error or {}
        message = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
        lines.append(
            f"  attempt {run.attempt} {run.failure_reason or run.state} on {run.claimed_by or '-'}"
            f" at {when(run.finished_at) or '-'}: {message or '-'}"
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
        ("created_at", when(task.created_at)),
        ("params", json_text(task.params, VALUE_MAX)),
        ("headers", json_text(task.headers, VALUE_MAX) if task.headers else None),
        (
            "result",
            json_text(task.result, VALUE_MAX) if task.state is TaskState.COMPLETED else None,
        ),
        ("failure", f"{failure.reason} {failure.message}".strip() if failure else None),
    ]
    if task.discarded_at is not None:
        fields.append(("discarded_at", when(task.discarded_at)))
    # the fields of the features a task may not use: shown only when set
    optional: list[tuple[str, object]] = [
        ("tags", ", ".join(task.tags)),
        ("partition_key", task.partition_key),
        ("parent_task_id", task.parent_task_id),
        (
            "scheduled_at",
            when(task.scheduled_at) if task.scheduled_at != task.created_at else None,
        ),
        ("depends_on", ", ".join(str(d) for d in task.depends_on)),
        ("pending_dependencies", ", ".join(str(d) for d in task.pending_dependencies)),
        ("waiting_for", "; ".join(_wait_text(wait) for wait in task.waiting_for)),
        ("batch_ids", ", ".join(str(b) for b in task.batch_ids)),
        ("wakes_at", _wakes_at(task)),
        ("progress", _progress_text(task.progress) if task.progress else None),
    ]
    fields += [(name, value) for name, value in optional if value]
    return table(["field", "value"], fields, header=False)


def _wait_text(wait: dict[str, Any]) -> str:
    """One thing a parked task waits for: an event, another task, several tasks (ctx.gather) or
    a message on a topic (ctx.recv), and until when."""
    if wait.get("event_name") is not None:
        what = f"event {wait['event_name']!r}"
    elif wait.get("topic") is not None:
        what = f"a message on topic {wait['topic']!r}"
    elif wait.get("child_task_ids") is not None:
        running, every = wait.get("running_task_ids") or [], wait["child_task_ids"]
        what = f"{len(every)} tasks, {len(running)} still running"
    else:
        what = f"task {wait.get('child_task_id')}"
    timeout = wait.get("timeout_at")
    until = f"timeout {when(datetime.fromisoformat(timeout))}" if timeout else "no timeout"
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
    return when(run.available_at)


def _progress_text(progress: Progress) -> str:
    text = f"{progress.pct:g}%"
    if progress.detail is not None:
        detail = progress.detail
        text += " " + (detail if isinstance(detail, str) else json_text(detail, CELL_MAX))
    if progress.at is not None:
        text += f" (at {when(progress.at)})"
    return clip(text, VALUE_MAX)
