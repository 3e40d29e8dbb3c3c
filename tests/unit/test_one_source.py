"""One source per idea: the lists that typing forces us to write twice are held equal here."""

import dataclasses
import typing

from durable.protocol.records import DefinitionOptions, SpawnKwargs, SpawnOptions
from durable.runtime.registry import TaskKwargs
from durable.runtime.worker import WorkerKwargs, WorkerOptions

#: SpawnOptions fields that a caller never passes: set by durable itself.
_INTERNAL = {"parent_task_id", "on_discard"}


def _keys(typed_dict: object) -> set[str]:
    return set(typing.get_type_hints(typed_dict))


def test_spawn_keyword_arguments_are_the_fields_of_spawn_options() -> None:
    fields = {f.name for f in dataclasses.fields(SpawnOptions)}
    assert _keys(SpawnKwargs) == fields - _INTERNAL


def test_a_definition_sets_spawn_options_and_its_own() -> None:
    fields = {f.name for f in dataclasses.fields(SpawnOptions)}
    assert _keys(DefinitionOptions) <= fields
    own = _keys(TaskKwargs) - _keys(DefinitionOptions)
    assert own == {"name", "queue", "backoff", "retry_on", "discard_on", "global_limit",
                   "rate_limit", "on_discard", "retention", "concurrency_key",
                   "key_limit"}  # fmt: skip


def test_run_worker_takes_every_worker_option() -> None:
    fields = {f.name for f in dataclasses.fields(WorkerOptions)}
    positional = {"queues", "concurrency", "claim_timeout"}
    assert _keys(WorkerKwargs) == fields - positional


def test_spawn_options_encode_every_field_they_hold() -> None:
    import uuid
    from datetime import UTC, datetime

    from durable import Cancellation, Fixed, Unique

    options = SpawnOptions(
        idempotency_key="k",
        max_attempts=2,
        retry=Fixed(1),
        timeout=3,
        heartbeat_timeout=4,
        priority=5,
        at=datetime(2030, 1, 1, tzinfo=UTC),
        headers={"h": 1},
        tags=["t"],
        partition_key="p",
        concurrency_key="c",
        unique=Unique(keys=["a"]),
        cancellation=Cancellation(max_delay=6),
        depends_on=[uuid.UUID(int=1)],
        parent_task_id=uuid.UUID(int=2),
        on_parent_cancel="abandon",
        retry_on=["timeout"],
        discard_on=["validation"],
        on_discard=True,
    )
    fields = {f.name for f in dataclasses.fields(SpawnOptions)}
    assert set(options.to_json()) == fields - {"delay"}  # delay and at exclude each other
