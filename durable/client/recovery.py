"""Recovery in bulk: retry, cancel, discard or replay the tasks a filter (or a selection)
matched.

``durable retry --queue q --reason crash`` lists the matching failed work (a dry run unless
``--yes``), then acts on each row in turn, at most ``rate`` per second, so that a fix can be tried
on a few before the rest (``--limit``); the console's bulk actions do the same with rows of the
task browser (:class:`TaskSummary`). Each action is its own statement; a row whose task changed
in the meantime (another operator, a worker) is reported and skipped, the others go on.

A retry revives the dependents its task's end cancelled (unless ``revive_dependents=False``). A
row that is such a dependent of another row is not retried on its own: it is reported as revived
with the row whose retry revived it (or, if that retry did not revive it, retried last on its
own, which says why it cannot run).
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
from durable.protocol.records import (
    FailedWork,
    FailedWorkState,
    SpawnInfo,
    TaskState,
    TaskSummary,
)

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
    #: A retry: the dependents revived with the task (each waits for its dependencies again).
    revived: tuple[SpawnInfo, ...] = ()
    #: A row revived by the retry of another row of the same call (that task's id).
    revived_with: uuid.UUID | None = None

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
    revive_dependents: bool = True,
) -> AsyncIterator[Change]:
    """Apply ``action`` to each of ``rows`` in order, at most ``rate`` per second (None: as
    fast as the database answers); yield what changed, row by row. A retry revives the
    dependents each task's end cancelled, unless ``revive_dependents`` is False."""
    action = Action(action)
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive (actions per second)")
    revive = action is Action.RETRY and revive_dependents
    later: dict[uuid.UUID, _T] = {}
    if revive and rows:
        dependents = await client.revivable_dependents([row.task_id for row in rows])
        revivable = {d.task_id for d in dependents}
        later = {row.task_id: row for row in rows if row.task_id in revivable}
    done: set[uuid.UUID] = set()  # the rows revived with another one
    started, sent = anyio.current_time(), 0
    for row in [*(row for row in rows if row.task_id not in later), *later.values()]:
        if row.task_id in done:
            continue
        if rate is not None:
            await anyio.sleep_until(started + sent / rate)
        sent += 1
        change = await _apply(client, row, action, revive)
        yield _logged(change)
        for dependent in change.revived:
            if dependent.task_id in later and dependent.task_id not in done:
                done.add(dependent.task_id)
                yield _logged(_revived_with(later[dependent.task_id], dependent, row.task_id))


def _logged(change: Change) -> Change:
    log.info(
        "task.recovered" if change.changed else "task.recovery_skipped",
        action=str(change.action),
        task_id=str(change.task_id),
        queue=change.queue,
        task_name=change.task_name,
        error=change.error,
        revived=[str(d.task_id) for d in change.revived] or None,
        revived_with=str(change.revived_with) if change.revived_with else None,
    )
    return change


def _revived_with(row: Target, info: SpawnInfo, dependency: uuid.UUID) -> Change:
    """The change of a row that the retry of ``dependency`` revived."""
    return Change(
        action=Action.RETRY,
        task_id=row.task_id,
        queue=row.queue,
        task_name=row.task_name,
        before=str(row.state),
        after=str(TaskState.PENDING),
        run_id=info.run_id,
        attempt=info.attempt,
        revived_with=dependency,
    )


async def _apply(client: Client, row: Target, action: Action, revive: bool) -> Change:
    change = Change(
        action=action,
        task_id=row.task_id,
        queue=row.queue,
        task_name=row.task_name,
        before=str(row.state),
    )
    try:
        if action is Action.RETRY:
            retried = await client.retry(row.queue, row.task_id, revive_dependents=revive)
            return replace(
                change,
                after=str(TaskState.PENDING),
                run_id=retried.run_id,
                attempt=retried.attempt,
                revived=retried.revived,
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
