"""What the dashboard's pages show, as JSON documents built from the client's records.

Every database call goes through :class:`durable.Client`. Long values (params, results, checkpoint
values, tracebacks) are clipped here, so that a poll every second stays small whatever the tasks
carry.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import orjson

from durable.client import Client
from durable.protocol.failures import reason_class_counts
from durable.protocol.records import (
    FailedWork,
    FailedWorkState,
    FailureGroup,
    QueueCount,
    ReasonClass,
    RunRecord,
    RunState,
    TaskRecord,
    TaskState,
)

#: The window of the throughput figures, in seconds (tasks that ended in the last minute).
THROUGHPUT_WINDOW_S = 60.0
#: Rows of the overview's "recent failed work" list.
FAILED_WORK_LIMIT = 50
#: Rows of the overview's failure groups (the most frequent; the class totals count them all).
FAILURE_GROUPS_LIMIT = 50
#: Longest JSON text shown for params, headers, a result or progress detail.
VALUE_MAX = 4000
#: Longest JSON text shown for one checkpoint value.
CHECKPOINT_VALUE_MAX = 300
#: Longest error message and traceback shown.
MESSAGE_MAX = 2000
TRACEBACK_MAX = 20000

Doc = dict[str, Any]

_LIVE_RUN_STATES = (RunState.PENDING, RunState.RUNNING, RunState.SLEEPING)


async def overview(client: Client, *, failed_limit: int = FAILED_WORK_LIMIT) -> Doc:
    """Queues with their counts and throughput, and failed work by reason class."""
    counts = await client.queue_counts()
    finished = await client.finished_counts(THROUGHPUT_WINDOW_S)
    groups = await client.failure_groups()
    failed = await client.failed_work(limit=failed_limit)
    return {
        "queues": _queues(counts, finished),
        "throughput_window_s": THROUGHPUT_WINDOW_S,
        "reason_classes": _reason_classes(groups, failed),
        "failure_groups": [_failure_group(group) for group in groups[:FAILURE_GROUPS_LIMIT]],
        "failure_groups_total": len(groups),
        "failed_work": [_failed_work(row) for row in failed],
        "failed_work_limit": failed_limit,
    }


def _queues(counts: list[QueueCount], finished: list[QueueCount]) -> list[Doc]:
    per_minute = 60.0 / THROUGHPUT_WINDOW_S
    queues: dict[str, Doc] = {}

    def row(queue: str) -> Doc:
        return queues.setdefault(
            queue,
            {
                "queue": queue,
                # JSON keys: plain strings (orjson refuses str subclasses as keys)
                "counts": {str(state): 0 for state in TaskState},
                "total": 0,
                "finished": {str(state): 0 for state in TaskState if state.finished},
            },
        )

    for count in counts:
        doc = row(count.queue)
        doc["counts"][str(count.state)] += count.count
        doc["total"] += count.count
    for count in finished:
        doc = row(count.queue)
        state = str(count.state)
        doc["finished"][state] = doc["finished"].get(state, 0) + count.count
    for doc in queues.values():
        doc["completed_per_min"] = round(doc["finished"]["completed"] * per_minute, 1)
        doc["failed_per_min"] = round(doc["finished"]["failed"] * per_minute, 1)
    return [queues[name] for name in sorted(queues)]


def _reason_classes(groups: list[FailureGroup], failed: list[FailedWork]) -> list[Doc]:
    """Every reason class with how much failed work it holds (all of it, from the groups) and
    how many of the rows listed below are in it."""
    total: Counter[ReasonClass] = Counter()
    for group in groups:
        total[group.reason_class] += group.count
    listed = reason_class_counts(failed)
    return [
        {"reason_class": rc, "count": total[rc], "listed": listed.get(rc, 0)} for rc in ReasonClass
    ]


def _failure_group(group: FailureGroup) -> Doc:
    return {
        "reason_class": group.reason_class,
        "failure_reason": group.failure_reason,
        "error_type": group.error_type,
        "task_name": group.task_name,
        "queue": group.queue,
        "count": group.count,
        "first_seen": group.first_seen,
        "last_seen": group.last_seen,
    }


def _failed_work(row: FailedWork) -> Doc:
    return {
        "task_id": row.task_id,
        "run_id": row.run_id,
        "queue": row.queue,
        "task_name": row.task_name,
        "state": row.state,
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "failure_reason": row.failure_reason,
        "reason_class": row.reason_class,
        **_error_fields(row.error, traceback=False),
        "failed_at": row.failed_at,
        "retryable": row.retryable,
        "recovery": row.recovery,
        "last_checkpoint": row.last_checkpoint,
        "tags": row.tags,
        # what an operator may do: retry dead work, cancel work that will run again
        "can_retry": row.state is FailedWorkState.FAILED,
        "can_cancel": row.state is FailedWorkState.RETRYING,
    }


async def task_detail(client: Client, task_id: uuid.UUID) -> Doc:
    """A task with its runs (oldest first, each with the code version it ran), checkpoints,
    progress, the state it published and the actions it allows."""
    task = await client.get_task(None, task_id)
    checkpoints = await client.get_checkpoints(task.queue, task_id)
    published = await client.get_state(task.queue, task_id)
    return {
        "task": _task(task),
        "published_state": [
            {"key": key, "value": _json_text(value, VALUE_MAX)} for key, value in published.items()
        ],
        "runs": [_run(run) for run in task.runs],
        "checkpoints": [
            {
                "step": c.step_name,
                "value": _json_text(c.value, CHECKPOINT_VALUE_MAX),
                "run_id": c.run_id,
                "created_at": c.created_at,
            }
            for c in checkpoints
        ],
        "actions": actions(task),
    }


def actions(task: TaskRecord) -> dict[str, bool]:
    """Retry a failed or cancelled task; cancel one that has not finished."""
    return {
        "retry": task.state in (TaskState.FAILED, TaskState.CANCELLED),
        "cancel": not task.state.finished,
    }


def _task(task: TaskRecord) -> Doc:
    progress = task.progress
    failure = task.failure
    return {
        "task_id": task.task_id,
        "task_name": task.task_name,
        "queue": task.queue,
        "state": task.state,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "idempotency_key": task.idempotency_key,
        "created_at": task.created_at,
        "scheduled_at": task.scheduled_at,
        "params": _json_text(task.params, VALUE_MAX),
        "headers": _json_text(task.headers, VALUE_MAX) if task.headers else None,
        "tags": task.tags,
        "result": (
            _json_text(task.result, VALUE_MAX) if task.state is TaskState.COMPLETED else None
        ),
        "failure": (
            {"reason": failure.reason, "message": _clip(failure.message, MESSAGE_MAX)}
            if failure
            else None
        ),
        "progress": (
            {
                "pct": progress.pct,
                "detail": (
                    progress.detail
                    if progress.detail is None or isinstance(progress.detail, str)
                    else _json_text(progress.detail, VALUE_MAX)
                ),
                "at": progress.at,
            }
            if progress
            else None
        ),
        "parent_task_id": task.parent_task_id,
        "depends_on": task.depends_on,
        "pending_dependencies": task.pending_dependencies,
        "waiting_for": [_json_text(wait, VALUE_MAX) for wait in task.waiting_for],
        "batch_ids": task.batch_ids,
    }


def _run(run: RunRecord) -> Doc:
    return {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "state": run.state,
        "live": run.state in _LIVE_RUN_STATES,
        "worker": run.claimed_by,
        "code_version": run.code_version,
        "available_at": run.available_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "failure_reason": run.failure_reason,
        # the class the worker recorded with a handler's error (the others have none here)
        "reason_class": (run.error or {}).get("reason_class"),
        **_error_fields(run.error, traceback=True),
    }


def _error_fields(error: dict[str, Any] | None, *, traceback: bool) -> Doc:
    error = error or {}
    fields: Doc = {
        "error_type": _optional_text(error.get("type"), MESSAGE_MAX),
        "error_message": _optional_text(error.get("message"), MESSAGE_MAX),
    }
    if traceback:
        fields["traceback"] = _optional_text(error.get("traceback"), TRACEBACK_MAX, tail=True)
    return fields


def _optional_text(value: Any, limit: int, *, tail: bool = False) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return _clip(text, limit, tail=tail)


def _json_text(value: Any, limit: int) -> str:
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:  # not JSON after all (a value orjson cannot encode): show its repr
        text = repr(value)
    return _clip(text, limit)


def _clip(text: str, limit: int, *, tail: bool = False) -> str:
    """At most ``limit`` characters; a traceback keeps its end (where the error is)."""
    if len(text) <= limit:
        return text
    if tail:
        return "…" + text[-(limit - 1) :]
    return text[: limit - 1] + "…"


def to_json(doc: Any) -> bytes:
    """Datetimes, enums and UUIDs as JSON (asyncpg's UUIDs are a subclass orjson does not know)."""
    return orjson.dumps(doc, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
