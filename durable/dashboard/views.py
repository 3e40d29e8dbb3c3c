"""What the console's pages show, as JSON documents built from the client's records.

Every database call goes through :class:`durable.Client`, and each costs what the page shows,
never the history: the live runs (``queue_depth``), a window of the flow (``flow``), a page of
tasks (``list_tasks``), the failed work. Long values (params, results, checkpoint values,
tracebacks) are clipped here, so that a refresh stays small whatever the tasks carry.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import orjson

from durable.client import Client
from durable.client.client import TaskFilters
from durable.client.flow import series
from durable.protocol.failures import reason_class_counts
from durable.protocol.records import (
    Checkpoint,
    FailedWork,
    FailedWorkState,
    FailureGroup,
    QueueCount,
    QueueDepth,
    ReasonClass,
    RunRecord,
    RunState,
    TaskRecord,
    TaskState,
    TaskSummary,
    WorkerInfo,
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

#: The window of the finished counts per queue on the overview (tasks that ended in it).
FINISHED_WINDOW_S = 86400.0
#: The flow page's windows: how far back, and the step of its series.
FLOW_WINDOWS = {"hour": (3600, 60), "day": (86400, 600)}
#: Workers gone (stopped, or lapsed) within this are still listed, greyed.
WORKERS_GONE_WITHIN_S = 3600.0

Doc = dict[str, Any]
_T = TypeVar("_T")


class _Later(Generic[_T]):
    """What a read started in a task group returns, once the group has ended."""

    __slots__ = ("_value",)

    @property
    def value(self) -> _T:
        return self._value

    async def fill(self, read: Awaitable[_T]) -> None:
        self._value = await read


def _first(group: BaseExceptionGroup[Exception]) -> Exception:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, Exception)
    return leaf


def _later(tg: anyio.abc.TaskGroup, read: Awaitable[_T]) -> _Later[_T]:
    later: _Later[_T] = _Later()
    tg.start_soon(later.fill, read)
    return later


_LIVE_RUN_STATES = (RunState.PENDING, RunState.RUNNING, RunState.SLEEPING)


async def overview(
    client: Client, *, failed_limit: int = FAILED_WORK_LIMIT, paused: frozenset[str] = frozenset()
) -> Doc:
    """Queues with their live counts, what ended in the last day and the throughput, and
    whether they are ``paused`` (listed even when nothing else is); failed work by reason
    class."""
    # five independent reads, at once (each on a connection of the client's pool); the first
    # error is the answer's, as if they had run one after another
    try:
        async with anyio.create_task_group() as tg:
            depth = _later(tg, client.queue_depth())
            finished = _later(tg, client.finished_counts(THROUGHPUT_WINDOW_S))
            day = _later(tg, client.ended_counts(FINISHED_WINDOW_S))
            groups_read = _later(tg, client.failure_groups())
            failed_read = _later(tg, client.failed_work(limit=failed_limit))
    except* Exception as group:  # noqa: BLE001 — re-raised: the first read's error, unwrapped
        raise _first(group) from None
    groups, failed = groups_read.value, failed_read.value
    queues = _queues(depth.value, day.value, finished.value, paused)
    return {
        "queues": queues,
        "throughput_window_s": THROUGHPUT_WINDOW_S,
        "finished_window_s": FINISHED_WINDOW_S,
        "queue_controls": True,
        "reason_classes": _reason_classes(groups, failed),
        "failure_groups": [_failure_group(group) for group in groups[:FAILURE_GROUPS_LIMIT]],
        "failure_groups_total": len(groups),
        "failed_work": [_failed_work(row) for row in failed],
        "failed_work_limit": failed_limit,
    }


def _queues(
    depth: list[QueueDepth],
    day: list[QueueCount],
    finished: list[QueueCount],
    paused: frozenset[str],
) -> list[Doc]:
    """Per queue: the live tasks (pending, running, sleeping: from the live runs), the tasks
    that ended in the last day (from the flow: completed, failed for good, cancelled), what
    could start now and since when, and the throughput of the last minute."""
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
                "available": 0,
                "oldest_available_s": None,
                "finished": {str(state): 0 for state in TaskState if state.finished},
            },
        )

    for d in depth:
        doc = row(d.queue)
        doc["counts"].update(pending=d.pending, running=d.running, sleeping=d.sleeping)
        doc["available"] = d.available
        doc["oldest_available_s"] = d.oldest_available_s
    for count in day:
        row(count.queue)["counts"][str(count.state)] += count.count
    for queue in paused:
        row(queue)
    for doc in queues.values():
        doc["total"] = sum(doc["counts"].values())
        doc["paused"] = doc["queue"] in paused
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
    """A task with its runs (oldest first, each with the code version it ran), checkpoints, its
    timeline, progress, the state it published and the actions it allows."""
    task = await client.get_task(None, task_id)
    checkpoints = await client.get_checkpoints(task.queue, task_id)
    published = await client.get_state(task.queue, task_id)
    return {
        "task": _task(task),
        "timeline": timeline(task.runs, checkpoints),
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
    """Retry a failed or cancelled task; cancel one that has not finished; discard one that did
    not complete and is not discarded yet; replay a finished one that is not discarded."""
    kept = task.discarded_at is None
    return {
        "retry": task.state in (TaskState.FAILED, TaskState.CANCELLED) and kept,
        "cancel": not task.state.finished,
        "discard": task.state is not TaskState.COMPLETED and kept,
        "replay": task.state.finished and kept,
    }


_WAIT_PREFIXES = ("$event:", "$result:", "$spawn:")


def timeline(runs: list[RunRecord], checkpoints: list[Checkpoint]) -> list[Doc]:
    """The task's life as bars: each run (claimed to ended) and each step, oldest first.

    A step's checkpoint records when it ended; it started when the step before it ended, or
    when the run that reached it started, whichever is later (steps of a handler run one after
    another). A sleep runs from its checkpoint (written when it began) to the wake-up time it
    holds; a wait for an event or a task ends when its outcome was recorded."""
    items: list[Doc] = []
    for run in runs:
        if run.started_at is None:
            continue
        items.append(
            _bar(
                "run",
                f"attempt {run.attempt}",
                run.started_at,
                run.finished_at,
                run_id=run.run_id,
                state=run.state,
            )
        )
    starts = sorted(run.started_at for run in runs if run.started_at is not None)
    previous: datetime | None = None
    for checkpoint in checkpoints:
        ended = checkpoint.created_at
        value = checkpoint.value
        if isinstance(value, dict) and set(value) == {"wake_at"}:
            wake = datetime.fromisoformat(str(value["wake_at"]))
            items.append(_bar("sleep", checkpoint.step_name, ended, wake, run_id=checkpoint.run_id))
        else:
            run_start = max((s for s in starts if s <= ended), default=ended)
            began = max(run_start, previous) if previous is not None else run_start
            kind = "wait" if checkpoint.step_name.startswith(_WAIT_PREFIXES) else "step"
            items.append(
                _bar(kind, checkpoint.step_name, min(began, ended), ended, run_id=checkpoint.run_id)
            )
        previous = ended
    return sorted(items, key=lambda item: (item["start"], item["kind"] != "run"))


def _bar(
    kind: str,
    name: str,
    start: datetime,
    end: datetime | None,
    *,
    run_id: uuid.UUID | None = None,
    state: str | None = None,
) -> Doc:
    return {
        "kind": kind,
        "name": name,
        "start": start,
        "end": end,
        "duration_s": None if end is None else max((end - start).total_seconds(), 0.0),
        "run_id": run_id,
        "state": state,
    }


async def task_list(client: Client, filters: TaskFilters) -> Doc:
    """A page of the task browser: the tasks and the cursor of the next page."""
    page = await client.list_tasks(**filters)
    return {
        "tasks": [_summary(task) for task in page.tasks],
        "next_before": page.next_before,
        "limit": filters.get("limit", 50),
    }


def _summary(task: TaskSummary) -> Doc:
    return {
        "task_id": task.task_id,
        "queue": task.queue,
        "task_name": task.task_name,
        "state": task.state,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "priority": task.priority,
        "created_at": task.created_at,
        "scheduled_at": task.scheduled_at,
        "finished_at": task.finished_at,
        "idempotency_key": task.idempotency_key,
        "tags": task.tags,
        "failure_reason": task.failure_reason,
        "error_type": _optional_text(task.error_type, MESSAGE_MAX),
        "progress": task.progress,
    }


async def flow(client: Client, window: str) -> Doc:
    """The flow page's series over the last hour or day (see :mod:`durable.client.flow`)."""
    if window not in FLOW_WINDOWS:
        raise ValueError(f"window must be one of {', '.join(FLOW_WINDOWS)}")
    span_s, step_s = FLOW_WINDOWS[window]
    end = datetime.now(UTC)
    start = end - timedelta(seconds=span_s)
    rows = await client.flow(start, step_s=step_s)
    s = series(rows, start=start, end=end + timedelta(seconds=60), step_s=step_s)
    return {
        "window": window,
        "step_s": s.step_s,
        "times": [t.timestamp() for t in s.times],
        "completed": s.completed,
        "failed": s.failed,
        "dead": s.dead,
        "failed_classes": s.failed_classes,
        "lag_s": {f"p{pct}": values for pct, values in s.lag_s.items()},
        "run_s": {f"p{pct}": values for pct, values in s.run_s.items()},
        "totals": s.totals,
    }


async def workers(client: Client) -> Doc:
    """The workers alive, then those gone within the last hour."""
    rows = await client.list_workers(WORKERS_GONE_WITHIN_S)
    return {"workers": [_worker(w) for w in rows], "gone_within_s": WORKERS_GONE_WITHIN_S}


def _worker(w: WorkerInfo) -> Doc:
    return {
        "worker_id": w.worker_id,
        "host": w.host,
        "pid": w.pid,
        "queues": w.queues,
        "started_at": w.started_at,
        "last_seen_at": w.last_seen_at,
        "expires_at": w.expires_at,
        "stopped_at": w.stopped_at,
        "alive": w.alive,
        "concurrency": w.concurrency,
        "busy": w.busy,
        "claimed_ahead": w.claimed_ahead,
        "stats_at": w.stats_at,
        "running": w.running,
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
