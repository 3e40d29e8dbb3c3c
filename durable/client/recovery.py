"""Recovery in bulk: retry, cancel, discard or replay the tasks a filter (or a selection)
matched.

``durable retry --queue q --reason crash`` lists the matching failed work (a dry run unless
``--yes``), then acts on each row in turn, at most ``rate`` per second, so that a fix can be tried
on a few before the rest (``--limit``); the console's bulk actions do the same with rows of the
task browser (:class:`TaskSummary`). Each action is its own statement; a row whose task changed
in the meantime (another operator, a worker) is reported and skipped, the others go on.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, TypeVar

import anyio

from durable.client import Client
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger
from durable.protocol.records import FailedWork, FailedWorkState, TaskState, TaskSummary

log = get_logger()


class Action(StrEnum):
    RETRY = "retry"  # a dead task gets a new run (from its last checkpoint)
    CANCEL = "cancel"  # a retrying task is cancelled: it will not run again
    DISCARD = "discard"  # either ends for good and leaves the failed work
    REPLAY = "replay"  # a finished task runs again (from its last checkpoint)


class Target(Protocol):
    """What an action is applied to: a row of the failed work or of the task browser."""

    @property
    def task_id(self) -> uuid.UUID: ...

    @property
    def queue(self) -> str: ...

    @property
    def task_name(self) -> str: ...

    @property
    def state(self) -> str: ...


_T = TypeVar("_T", bound=Target)


#: Which failed work each action applies to (the CLI's bulk commands: no replay there).
APPLIES_TO: dict[Action, frozenset[FailedWorkState]] = {
    Action.RETRY: frozenset({FailedWorkState.FAILED}),
    Action.CANCEL: frozenset({FailedWorkState.RETRYING}),
    Action.DISCARD: frozenset({FailedWorkState.FAILED, FailedWorkState.RETRYING}),
    Action.REPLAY: frozenset(),
}
_LIVE = frozenset({TaskState.PENDING, TaskState.RUNNING, TaskState.SLEEPING})
#: Which tasks of the task browser each action applies to, by live state.
APPLIES_TO_TASKS: dict[Action, frozenset[TaskState]] = {
    Action.RETRY: frozenset({TaskState.FAILED, TaskState.CANCELLED}),
    Action.CANCEL: _LIVE,
    Action.DISCARD: _LIVE | {TaskState.FAILED, TaskState.CANCELLED},
    Action.REPLAY: frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """What one action did to one task (``error`` set: nothing changed, and why)."""

    action: Action
    task_id: uuid.UUID
    queue: str
    task_name: str
    before: str
    after: str | None = None
    run_id: uuid.UUID | None = None
    attempt: int | None = None
    error: str | None = None

    @property
    def changed(self) -> bool:
        return self.error is None


def applicable(rows: Sequence[FailedWork], action: Action) -> list[FailedWork]:
    """The rows ``action`` applies to (retry: dead ones; cancel: retrying ones; discard: all)."""
    return [row for row in rows if row.state in APPLIES_TO[action]]


def applicable_tasks(rows: Sequence[TaskSummary], action: Action) -> list[TaskSummary]:
    """The tasks ``action`` applies to: retry a failed or cancelled one, cancel a live one,
    discard any but a completed one, replay a finished one."""
    return [row for row in rows if row.state in APPLIES_TO_TASKS[action]]


async def recover(
    client: Client,
    rows: Sequence[_T],
    action: Action | str,
    *,
    rate: float | None = None,
) -> AsyncIterator[Change]:
    """Apply ``action`` to each of ``rows`` in order, at most ``rate`` per second (None: as
    fast as the database answers); yield what changed, row by row."""
    action = Action(action)
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (actions per second)")
    started = anyio.current_time()
    for i, row in enumerate(rows):
        if rate is not None:
            await anyio.sleep_until(started + i / rate)
        change = await _apply(client, row, action)
        log.info(
            "task.recovered" if change.changed else "task.recovery_skipped",
            action=str(action),
            task_id=str(row.task_id),
            queue=row.queue,
            task_name=row.task_name,
            error=change.error,
        )
        yield change


async def _apply(client: Client, row: Target, action: Action) -> Change:
    change = Change(
        action=action,
        task_id=row.task_id,
        queue=row.queue,
        task_name=row.task_name,
        before=str(row.state),
    )
    try:
        if action is Action.RETRY:
            info = await client.retry(row.queue, row.task_id)
            return replace(
                change, after=str(TaskState.PENDING), run_id=info.run_id, attempt=info.attempt
            )
        if action is Action.CANCEL:
            await client.cancel(row.queue, row.task_id)
            return replace(change, after=str(TaskState.CANCELLED))
        if action is Action.REPLAY:
            info = await client.replay(row.queue, row.task_id)
            return replace(
                change, after=str(TaskState.PENDING), run_id=info.run_id, attempt=info.attempt
            )
        before = await client.discard(row.queue, row.task_id)
        after = TaskState.CANCELLED if not before.finished else before
        return replace(change, before=str(before), after=f"{after} (discarded)")
    except DurableError as exc:
        return replace(change, error=f"{type(exc).__name__}: {exc}")
