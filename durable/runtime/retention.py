"""Retention: finished tasks are deleted by age, per task name and end state.

``Durable(retention=Retention(...))`` is the rule for every task name without one of its own;
``@app.task(retention=Retention(...))`` gives a task name its own (a state it leaves None falls
back to the app's). Each worker prunes every ``retention_interval`` seconds, in bounded batches
(each a short transaction that skips locked rows, so workers pruning at once do not wait on each
other). Pending, sleeping and running work is never deleted by age.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from durable.client import Client
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger
from durable.protocol.records import Retention, TaskState

log = get_logger()

FINISHED = (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)


@dataclass(frozen=True, slots=True)
class PruneRule:
    """Delete tasks ended ``state`` more than ``older_than`` seconds ago: of ``task_names``
    only, or (None) of every name but ``except_names``."""

    state: TaskState
    older_than: float
    task_names: tuple[str, ...] | None = None
    except_names: tuple[str, ...] = ()


def prune_rules(default: Retention | None, per_task: Mapping[str, Retention]) -> list[PruneRule]:
    """The rules that ``default`` and the per-task-name retentions make, state by state."""
    rules: list[PruneRule] = []
    for state in FINISHED:
        own: dict[float, list[str]] = {}
        for name, retention in per_task.items():
            if (age := retention.ages().get(state)) is not None:
                own.setdefault(age, []).append(name)
        rules += [
            PruneRule(state, age, task_names=tuple(sorted(names))) for age, names in own.items()
        ]
        if default is not None and (age := default.ages().get(state)) is not None:
            excluded = sorted(name for names in own.values() for name in names)
            rules.append(PruneRule(state, age, except_names=tuple(excluded)))
    return rules


async def prune(client: Client, rules: list[PruneRule], *, batch: int = 1000) -> int:
    """Apply ``rules`` once (each in batches of ``batch``); how many tasks were deleted. Old
    events, partition turns and stopped workers go too, past the longest of the rules' ages.

    When the app's rule gives every end state an age, every finished task goes once it is older
    than the longest age of all the rules: the day partitions of history whose tasks all ended
    before that are dropped whole first (no row deleted one by one, nothing left to vacuum); the
    rules then delete the rows that are younger, or under a shorter age, as before."""
    total = 0
    if rules and {rule.state for rule in rules if rule.task_names is None} == set(FINISHED):
        await client.drop_history_partitions(max(rule.older_than for rule in rules))
    for rule in rules:
        total += await client.prune_tasks(
            rule.older_than,
            [rule.state],
            batch=batch,
            task_names=rule.task_names,
            except_names=rule.except_names or None,
        )
    if rules:
        await client.prune_bookkeeping(max(rule.older_than for rule in rules), batch=batch)
    return total


async def run_retention(
    client: Client, rules: list[PruneRule], interval_s: float, *, batch: int = 1000
) -> None:
    """Prune by ``rules`` every ``interval_s`` seconds (jittered), until cancelled. After a pass
    that deleted rows, vacuum the history tables when this role owns them: each pass starts
    where the last one's deletes left dead index entries, and without a vacuum (autovacuum off)
    every pass would walk all of them again."""
    may_vacuum: bool | None = None
    while True:
        await anyio.sleep(interval_s * random.uniform(0.5, 1.0))  # jitter: workers spread out
        try:
            deleted = await prune(client, rules, batch=batch)
            if deleted:
                if may_vacuum is None:
                    may_vacuum = await client.may_vacuum_hot_tables()
                if may_vacuum:
                    await client.vacuum_history_tables()
        except DurableError as exc:
            log.warning("retention.failed", error=str(exc))
            continue
        if deleted:
            log.info("retention.pruned", deleted=deleted)
