"""The console's actions: retry, cancel, discard or replay one task, or many at once — by the
selection on the task browser's page or by its filter — with a dry-run preview first and the
CLI's rate limit (:func:`durable.client.recovery.recover` does the acting for both).

A bulk request is JSON: ``{"action": "retry", "task_ids": [...]}`` or ``{"action": "retry",
"filter": {"queue": "payments", "state": "failed", ...}}``, with ``"dry_run"`` (default true: it
only says what would change), ``"limit"`` (the most tasks it acts on, 1 to 1000, default 100)
and ``"rate"`` (tasks per second; none: as fast as the database answers).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from durable.client import Client
from durable.client.client import TaskFilters
from durable.client.recovery import APPLIES_TO_TASKS, Action, Change, applicable_tasks, recover
from durable.protocol.log import get_logger
from durable.protocol.records import Dependent, TaskSummary

__all__ = ["Action", "BadRequest", "act_in_bulk", "act_on_one", "filters_from_query"]

log = get_logger()

#: The most tasks one bulk request acts on, and the most a preview lists.
MAX_BULK = 1000
PREVIEW_ROWS = 100
DEFAULT_BULK = 100

_EVENTS = {
    Action.RETRY: "dashboard.task_retried",
    Action.CANCEL: "dashboard.task_cancelled",
    Action.DISCARD: "dashboard.task_discarded",
    Action.REPLAY: "dashboard.task_replayed",
}
#: What each action does, for the preview (the CLI's words).
WHAT = {
    Action.RETRY: "failed or cancelled tasks: a retry gives each a new run, from its last "
    "checkpoint",
    Action.CANCEL: "live tasks: a cancel stops each from running again",
    Action.DISCARD: "tasks that did not complete: a discard ends each for good (a live one is "
    "cancelled)",
    Action.REPLAY: "finished tasks: a replay runs each again, from its last checkpoint",
}
_FILTER_KEYS = ("queue", "task_name", "state", "tag", "since", "until", "search")


class BadRequest(Exception):
    """A request the console cannot act on; the message says why (answered 400)."""


def filters_from_query(query: Mapping[str, str] | Any) -> TaskFilters:
    """The task browser's filters from a query string (or a bulk request's ``filter``):
    ``queue``, ``task_name``, ``state``, ``tag`` (comma-separated: all of them), ``since`` and
    ``until`` (ISO times, or ``since`` as seconds back from now), ``search`` (a task id, a
    params JSON object to contain, or an idempotency key), ``before`` and ``limit``."""
    get = query.get
    filters: TaskFilters = {}
    for key in ("queue", "task_name", "state"):
        if value := get(key):
            filters[key] = str(value)
    if tags := get("tag"):
        filters["tags"] = [t.strip() for t in str(tags).split(",") if t.strip()]
    if since := get("since"):
        filters["since"] = _time(str(since), "since", allow_seconds=True)
    if until := get("until"):
        until_at = _time(str(until), "until", allow_seconds=False)
        assert isinstance(until_at, datetime)
        filters["until"] = until_at
    if search := str(get("search") or "").strip():
        filters.update(_search(search))
    if before := get("before"):
        filters["before"] = _uuid(str(before), "before")
    if limit := get("limit"):
        filters["limit"] = _int(limit, "limit")
    return filters


def _search(text: str) -> TaskFilters:
    """A task id, params to contain (a JSON object or array), else an idempotency key."""
    try:
        return {"task_id": uuid.UUID(text)}
    except ValueError:
        pass
    if text[:1] in "{[":
        try:
            return {"params": orjson.loads(text)}
        except orjson.JSONDecodeError:
            raise BadRequest(f"search {text[:80]!r} is not valid JSON") from None
    return {"idempotency_key": text}


def _time(text: str, what: str, *, allow_seconds: bool) -> datetime | float:
    if allow_seconds:
        try:
            value = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(value) and value >= 0:
                return value
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{what} {text[:40]!r} is not an ISO time") from None
    if at.tzinfo is None:
        raise BadRequest(f"{what} {text[:40]!r} has no timezone — add Z or an offset")
    return at


def _uuid(text: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadRequest(f"{what} {text[:40]!r} is not a task id") from None


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a whole number, got {str(value)[:20]!r}") from None


# --- one task -------------------------------------------------------------------------------------


async def act_on_one(client: Client, task_id: uuid.UUID, action: Action) -> dict[str, Any]:
    """Apply ``action`` to one task; its state before and after, and its new run if any."""
    before = await client.get_task(None, task_id)
    run_id: uuid.UUID | None = None
    attempt: int | None = None
    revived: list[uuid.UUID] = []
    if action is Action.RETRY:
        retried = await client.retry(before.queue, task_id)
        run_id, attempt = retried.run_id, retried.attempt
        revived = [d.task_id for d in retried.revived]
    elif action is Action.REPLAY:
        info = await client.replay(before.queue, task_id)
        run_id, attempt = info.run_id, info.attempt
    elif action is Action.CANCEL:
        await client.cancel(before.queue, task_id)
        run_id = before.runs[-1].run_id if before.runs else None
    else:
        await client.discard(before.queue, task_id)
    after = await client.get_task(before.queue, task_id)
    log.info(
        _EVENTS[action],
        task_id=str(task_id),
        queue=before.queue,
        task_name=before.task_name,
        run_id=str(run_id),
        before=str(before.state),
        revived=[str(r) for r in revived] or None,
    )
    doc: dict[str, Any] = {
        "task_id": task_id,
        "action": str(action),
        "before": before.state,
        "after": after.state,
        "run_id": run_id,
    }
    if attempt is not None:
        doc["attempt"] = attempt
    if action is Action.RETRY:
        doc["revived"] = revived  # the dependents its end had cancelled, revived with it
    return doc


# --- in bulk --------------------------------------------------------------------------------------


async def act_in_bulk(client: Client, body: Any) -> dict[str, Any]:
    """Preview (``dry_run``, the default) or apply an action to a selection or a filter."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        action = Action(str(body.get("action")))
    except ValueError:
        raise BadRequest(f"action must be one of: {', '.join(a.value for a in Action)}") from None
    limit = _int(body.get("limit", DEFAULT_BULK), "limit")
    if not 1 <= limit <= MAX_BULK:
        raise BadRequest(f"limit must be between 1 and {MAX_BULK}")
    rate = body.get("rate")
    if rate is not None and (
        not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0
    ):
        raise BadRequest("rate must be a positive number of tasks per second")
    dry_run = body.get("dry_run", True) is not False
    matched = await _matches(client, body, limit)
    targets = applicable_tasks(matched, action)
    if dry_run:
        preview = {
            "dry_run": True,
            "action": str(action),
            "what": WHAT[action],
            "applies_to": sorted(APPLIES_TO_TASKS[action]),
            "matched": len(matched),
            "applicable": len(targets),
            "limit": limit,
            "tasks": [_row(task) for task in targets[:PREVIEW_ROWS]],
        }
        if action is Action.RETRY and targets:
            # a retry revives the dependents each task's end cancelled: say which
            dependents = await client.revivable_dependents([t.task_id for t in targets])
            preview["dependents"] = [_dependent(d) for d in dependents[:PREVIEW_ROWS]]
            preview["revived"] = len(dependents)
        return preview
    changes = [change async for change in recover(client, targets, action, rate=rate)]
    changed = sum(change.changed for change in changes)
    log.info(
        "dashboard.bulk_action",
        action=str(action),
        matched=len(matched),
        changed=changed,
        not_changed=len(changes) - changed,
        rate=rate,
    )
    return {
        "dry_run": False,
        "action": str(action),
        "matched": len(matched),
        "changed": changed,
        "not_changed": len(changes) - changed,
        "changes": [_change(change) for change in changes],
    }


async def _matches(client: Client, body: dict[str, Any], limit: int) -> list[TaskSummary]:
    """The tasks a selection names (in its order) or, newest first, a filter matches."""
    ids, where = body.get("task_ids"), body.get("filter")
    if (ids is None) == (where is None):
        raise BadRequest("give task_ids (a selection) or filter, not both")
    if ids is not None:
        if not isinstance(ids, list) or not ids:
            raise BadRequest("task_ids must be a non-empty list of task ids")
        if len(ids) > limit:
            raise BadRequest(f"{len(ids)} task ids: more than the limit of {limit}")
        found: list[TaskSummary] = []
        for text in ids:
            page = await client.list_tasks(task_id=_uuid(str(text), "task id"), limit=1)
            found += page.tasks
        return found
    if not isinstance(where, dict):
        raise BadRequest("filter must be a JSON object")
    unknown = sorted(set(where) - set(_FILTER_KEYS))
    if unknown:
        raise BadRequest(f"unknown filter {unknown[0]!r}: use {', '.join(_FILTER_KEYS)}")
    filters = filters_from_query({k: v for k, v in where.items() if v not in (None, "")})
    filters["limit"] = limit
    return (await client.list_tasks(**filters)).tasks


def _row(task: TaskSummary) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "queue": task.queue,
        "task_name": task.task_name,
        "state": task.state,
        "created_at": task.created_at,
    }


def _dependent(dependent: Dependent) -> dict[str, Any]:
    return {
        "task_id": dependent.task_id,
        "queue": dependent.queue,
        "task_name": dependent.task_name,
        "dependency": dependent.dependency,
    }


def _change(change: Change) -> dict[str, Any]:
    return {
        "task_id": change.task_id,
        "queue": change.queue,
        "task_name": change.task_name,
        "before": change.before,
        "after": change.after,
        "run_id": change.run_id,
        "error": change.error,
        "revived": [d.task_id for d in change.revived],
        "revived_with": change.revived_with,
    }
