"""Properties of the protocol's inputs, checked with hypothesis against a real database.

* Any JSON value (None, bools, 64-bit integers, finite floats, any Unicode text, lists, objects)
  round-trips exactly: spawn -> claim (params, headers), set_checkpoint -> get_checkpoints,
  complete -> get_result.
* What PostgreSQL cannot store (a NUL character, a lone surrogate) and values over
  ``MAX_PAYLOAD_BYTES`` raise ``NotSerializable`` (``PayloadTooLarge``) and write nothing.
* Hostile queue, task and step names (quotes, semicolons, SQL, Unicode, very long, NUL) are stored
  verbatim when valid and refused with a typed error otherwise: never a raw driver error.

Hypothesis drives synchronous tests; each example runs on one event loop kept in a blocking
portal, against one database per test (every example uses queues of its own).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.database import table_counts

from durable.client import Client
from durable.protocol.codec import MAX_PAYLOAD_BYTES, RawJson
from durable.protocol.errors import (
    QUEUE_NAME_RE,
    InvalidArgument,
    InvalidQueueName,
    NotSerializable,
    PayloadTooLarge,
)
from durable.protocol.records import SpawnOptions, TaskState

T = TypeVar("T")

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,  # leave no .hypothesis/ directory behind
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one database, fresh queues
)

# --- strategies -------------------------------------------------------------------------------

# Any code point PostgreSQL text can hold: every one but NUL and the (lone) surrogates.
storable_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(storable_text, inner, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(storable_text, json_values, max_size=5)

nul_text = st.tuples(st.text(), st.text()).map(lambda ab: ab[0] + "\x00" + ab[1])
surrogate_text = st.tuples(storable_text, st.characters(categories=["Cs"])).map("".join)
bad_text = nul_text | surrogate_text


def _somewhere_in(bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """JSON values holding ``bad`` at some depth: as a value, in a list, or as an object key."""
    at_top = bad | st.dictionaries(bad, json_values, min_size=1, max_size=2)
    return st.recursive(
        at_top,
        lambda inner: (
            st.tuples(st.lists(json_values, max_size=3), inner).map(lambda t: [*t[0], t[1]])
            | st.tuples(storable_text, inner).map(lambda t: {t[0]: t[1]})
        ),
        max_leaves=4,
    )


unstorable_values = _somewhere_in(bad_text)

SQL_FRAGMENTS = [
    "'",
    '"',
    "'; drop table durable.tasks; --",
    "x'); delete from durable.runs; --",
    "\\",
    "$1",
    "$$; select pg_sleep(10); $$",
    "jobs; select 1",
    "jobs--",
    "jobs/*",
    "durable.tasks",
    "\uff4a\uff4f\uff42\uff53",  # fullwidth "jobs"
    "jöbs",
    "jobs\u200b",  # zero-width space
    "jobs\n",
    "jobs\x00",
    "jobs\ud800",
    "q" * 49,
    "q" * 10_000,
    "",
    " ",
]
hostile_names = st.sampled_from(SQL_FRAGMENTS) | st.text(max_size=300) | bad_text


# --- harness ----------------------------------------------------------------------------------


@dataclass
class Db:
    """A client and a raw connection living on a portal's event loop."""

    portal: BlockingPortal
    client: Client
    raw: asyncpg.Connection

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def rows(self) -> tuple[int, ...]:
        return self.run(table_counts, self.raw)


@pytest.fixture
def db(dsn: str) -> Iterator[Db]:
    with start_blocking_portal(backend="asyncio") as portal:
        client = Client(dsn)
        portal.call(client.connect)
        raw: asyncpg.Connection = portal.call(asyncpg.connect, dsn)
        try:
            yield Db(portal, client, raw)
        finally:
            portal.call(raw.close)
            portal.call(client.close)


def _decimal(number: float) -> Decimal:
    """The decimal a number's JSON text denotes (orjson writes floats in their shortest form)."""
    return Decimal(repr(number)) if isinstance(number, float) else Decimal(number)


def _queue() -> str:
    return f"q_{uuid.uuid4().hex[:16]}"


def assert_same_json(actual: Any, expected: Any) -> None:
    """Equal as JSON values: bools stay bools, strings and structure exactly, and a number denotes
    the same decimal and reads back as the same double.

    JSON has one number type and jsonb stores it as ``numeric``, which prints no exponent: a float
    with no fraction digits such as 1e18 or 5.40766721834581e16 comes back as the int with that
    decimal value (10**18, 54076672183458100), and -0.0 as 0.0.
    """
    if isinstance(expected, bool) or expected is None:
        assert actual is expected
    elif isinstance(expected, int | float):
        assert isinstance(actual, int | float)
        assert not isinstance(actual, bool)
        assert _decimal(actual) == _decimal(expected)
        if isinstance(expected, float):
            assert float(actual) == expected
        else:
            assert isinstance(actual, int)
    elif isinstance(expected, str):
        assert isinstance(actual, str)
        assert actual == expected
    elif isinstance(expected, list):
        assert isinstance(actual, list)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same_json(a, e)
    else:
        assert isinstance(expected, dict)
        assert isinstance(actual, dict)
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            assert_same_json(actual[key], value)


# --- JSON round trips -------------------------------------------------------------------------


async def _round_trip(
    client: Client, params: Any, headers: dict[str, Any], step_value: Any, result: Any
) -> None:
    queue = _queue()
    info = await client.spawn(queue, "job", params, SpawnOptions(headers=headers))
    [claim] = await client.claim(queue, "w1", 60)
    assert claim.task_id == info.task_id
    assert_same_json(claim.params, params)
    assert_same_json(claim.headers, headers)
    await client.set_checkpoint(queue, claim.run_id, "step", step_value)
    [checkpoint] = await client.get_checkpoints(queue, info.task_id)
    assert_same_json(checkpoint.value, step_value)
    await client.complete(queue, claim.run_id, result)
    outcome = await client.get_result(queue, info.task_id)
    assert outcome.state is TaskState.COMPLETED
    assert_same_json(outcome.result, result)
    record = await client.get_task(queue, info.task_id)
    assert_same_json(record.params, params)
    assert_same_json(record.headers, headers)


@PROPERTY
@given(params=json_values, headers=json_objects, step_value=json_values, result=json_values)
def test_any_json_value_round_trips_exactly(
    db: Db, params: Any, headers: dict[str, Any], step_value: Any, result: Any
) -> None:
    db.run(_round_trip, db.client, params, headers, step_value, result)


async def _round_trip_many(client: Client, values: list[Any]) -> None:
    queue = _queue()
    infos = await client.spawn_many(queue, [("job", v) for v in values])
    claims = await client.claim(queue, "w1", 60, qty=len(values))
    by_task = {c.task_id: c.params for c in claims}
    for info, value in zip(infos, values, strict=True):
        assert_same_json(by_task[info.task_id], value)


@PROPERTY
@given(values=st.lists(json_values, min_size=1, max_size=5))
def test_any_json_value_round_trips_through_spawn_many(db: Db, values: list[Any]) -> None:
    db.run(_round_trip_many, db.client, values)


def test_json_edge_values_round_trip_exactly(db: Db) -> None:
    for value in (
        [2**63 - 1, -(2**63), 0, -0.0, 5e-324, 1.7976931348623157e308, 1e18, 0.1],
        {"": "", "\\u0000": "\\u0000", "\\": "\\\\", '"': "'"},  # escapes that are not NUL
        "\U0001f600 \u202e right-to-left \u0301 combining \uffff \U0010ffff",
        {"a" * 10_000: ["b" * 10_000]},
    ):
        db.run(_round_trip, db.client, value, {}, value, value)


# --- values PostgreSQL cannot store -----------------------------------------------------------


async def _refuse_everywhere(db: Db, value: Any) -> list[NotSerializable]:
    """Spawn, checkpoint, complete and fail with ``value``: each raises; nothing changes."""
    queue = _queue()
    await db.client.spawn(queue, "job", None)
    [claim] = await db.client.claim(queue, "w1", 60)
    before = await table_counts(db.raw)
    caught: list[NotSerializable] = []
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: db.client.spawn(queue, "job", value),
        lambda: db.client.spawn_many(queue, [("job", 1), ("job", value)]),
        lambda: db.client.spawn(queue, "job", None, SpawnOptions(headers={"h": value})),
        lambda: db.client.set_checkpoint(queue, claim.run_id, "step", value),
        lambda: db.client.complete(queue, claim.run_id, value),
        lambda: db.client.fail(queue, claim.run_id, {"message": value}),
    ]
    for call in calls:
        with pytest.raises(NotSerializable) as info:
            await call()
        caught.append(info.value)
    assert await table_counts(db.raw) == before
    state = await db.raw.fetchval("select state from durable.runs where run_id = $1", claim.run_id)
    assert state == "running"
    return caught


@PROPERTY
@given(value=unstorable_values)
def test_a_nul_or_a_lone_surrogate_anywhere_is_not_serializable(db: Db, value: Any) -> None:
    caught = db.run(_refuse_everywhere, db, value)
    assert [e.what for e in caught] == [
        "params",
        "params",
        "options",
        "the value of step 'step'",
        "result",
        "error",
    ]
    for error in caught:
        assert not isinstance(error, PayloadTooLarge)
        assert isinstance(error.__cause__, TypeError | None)  # orjson's, never the driver's


def test_a_nul_is_refused_before_the_database_with_a_clear_message(db: Db) -> None:
    [spawn_error, *_] = db.run(_refuse_everywhere, db, {"name": "a\x00b"})
    assert spawn_error.__cause__ is None  # refused by encode_json: no round trip
    assert "NUL" in str(spawn_error)
    assert str(spawn_error).startswith("params is not JSON")


def test_a_nul_reaching_the_database_is_mapped(db: Db) -> None:
    """A \\u0000 escape built in SQL (not by encode_json) still maps to NotSerializable."""

    async def check() -> None:
        queue = _queue()
        await db.client.spawn(queue, "job", None)
        [claim] = await db.client.claim(queue, "w1", 60)
        with pytest.raises(NotSerializable) as caught:
            await db.client.complete(queue, claim.run_id, RawJson(b'"\\u0000"'))
        assert isinstance(caught.value.__cause__, asyncpg.PostgresError)

    db.run(check)


# --- payloads over the limit ------------------------------------------------------------------


async def _too_large(db: Db) -> list[PayloadTooLarge]:
    queue = _queue()
    await db.client.spawn(queue, "job", None)
    [claim] = await db.client.claim(queue, "w1", 60)
    before = await table_counts(db.raw)
    big = "x" * MAX_PAYLOAD_BYTES  # with its quotes, two bytes over
    caught: list[PayloadTooLarge] = []
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: db.client.spawn(queue, "job", big),
        lambda: db.client.spawn(queue, "job", {"list": [big[:1000]] * 20_000}),
        lambda: db.client.spawn_many(queue, [("job", big[: MAX_PAYLOAD_BYTES // 2])] * 3),
        lambda: db.client.set_checkpoint(queue, claim.run_id, "step", big),
        lambda: db.client.complete(queue, claim.run_id, big),
    ]
    for call in calls:
        with pytest.raises(PayloadTooLarge) as info:
            await call()
        caught.append(info.value)
    assert await table_counts(db.raw) == before
    assert await db.raw.fetchval("select state from durable.runs where run_id = $1", claim.run_id)
    return caught


def test_a_payload_over_the_limit_raises_payload_too_large(db: Db) -> None:
    caught = db.run(_too_large, db)
    first = caught[0]
    assert isinstance(first, NotSerializable)
    assert (first.what, first.size, first.limit) == ("params", MAX_PAYLOAD_BYTES + 2, 16 << 20)
    assert str(first).startswith("params is too large: 16,777,218 bytes of JSON")
    assert "16,777,216" in str(first)
    assert caught[3].what == "the value of step 'step'"
    assert caught[4].what == "result"


def test_a_payload_at_the_limit_is_accepted(db: Db) -> None:
    async def check() -> None:
        queue = _queue()
        at_limit = "y" * (MAX_PAYLOAD_BYTES - 2)  # exactly MAX_PAYLOAD_BYTES with its quotes
        await db.client.spawn(queue, "job", at_limit)
        [claim] = await db.client.claim(queue, "w1", 60)
        assert claim.params == at_limit

    db.run(check)


# --- hostile names ----------------------------------------------------------------------------


def _valid_text(name: str) -> bool:
    return "\x00" not in name and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)


async def _hostile_queue(db: Db, queue: str) -> None:
    before = await table_counts(db.raw)
    client = db.client
    for call in (
        lambda: client.spawn(queue, "job", {}),
        lambda: client.spawn_many(queue, [("job", {})]),
        lambda: client.claim(queue, "w1"),
        lambda: client.get_task(queue, uuid.uuid4()),
        lambda: client.cancel(queue, uuid.uuid4()),
    ):
        with pytest.raises(InvalidQueueName) as caught:
            await call()
        assert caught.value.queue == queue
    # past the client's check, SQL refuses it too: DU004, or a driver error mapped to a type
    for call in (
        lambda: client.store.spawn(queue, "job", {}, {}),
        lambda: client.store.spawn_many(queue, [("job", {}, {})]),
        lambda: client.store.claim(queue, "w1", 60, 1),
    ):
        with pytest.raises((InvalidQueueName, InvalidArgument)):
            await call()
    assert await table_counts(db.raw) == before


@PROPERTY
@given(queue=hostile_names.filter(lambda q: not _is_valid_queue(q)))
def test_a_hostile_queue_name_raises_invalid_queue_name_and_writes_nothing(
    db: Db, queue: str
) -> None:
    db.run(_hostile_queue, db, queue)


def _is_valid_queue(queue: str) -> bool:
    return QUEUE_NAME_RE.fullmatch(queue) is not None


async def _hostile_task_name(db: Db, name: str) -> None:
    queue = _queue()
    before = await table_counts(db.raw)
    if 1 <= len(name) <= 255 and _valid_text(name):
        info = await db.client.spawn(queue, name, {"n": 1})
        [many] = await db.client.spawn_many(queue, [(name, {"n": 2})])
        claims = await db.client.claim(queue, "w1", 60, qty=2)
        assert {c.task_name for c in claims} == {name}
        assert {c.task_id for c in claims} == {info.task_id, many.task_id}
        return
    with pytest.raises(InvalidArgument):
        await db.client.spawn(queue, name, {})
    # spawn_many sends its items as one JSON document: a NUL or a surrogate is not JSON there
    expected = InvalidArgument if _valid_text(name) else NotSerializable
    with pytest.raises(expected):
        await db.client.spawn_many(queue, [("fine", {}), (name, {})])
    assert await table_counts(db.raw) == before


@PROPERTY
@given(name=hostile_names)
def test_a_hostile_task_name_is_stored_verbatim_or_refused_with_invalid_argument(
    db: Db, name: str
) -> None:
    db.run(_hostile_task_name, db, name)


async def _hostile_step_name(db: Db, step: str) -> None:
    queue = _queue()
    info = await db.client.spawn(queue, "job", None)
    [claim] = await db.client.claim(queue, "w1", 60)
    if step and _valid_text(step):
        await db.client.set_checkpoint(queue, claim.run_id, step, [step])
        [checkpoint] = await db.client.get_checkpoints(queue, info.task_id)
        assert (checkpoint.step_name, checkpoint.value) == (step, [step])
        return
    before = await table_counts(db.raw)
    with pytest.raises(InvalidArgument):
        await db.client.set_checkpoint(queue, claim.run_id, step, 1)
    assert await table_counts(db.raw) == before


@PROPERTY
@given(step=hostile_names.filter(lambda s: len(s) <= 1000))
def test_a_hostile_step_name_is_stored_verbatim_or_refused(db: Db, step: str) -> None:
    db.run(_hostile_step_name, db, step)


def test_a_key_too_long_for_its_index_raises_invalid_argument(db: Db) -> None:
    """Keys PostgreSQL indexes (idempotency key, step name) have a size limit of their own."""
    incompressible = uuid.uuid4().hex + "".join(uuid.uuid4().hex for _ in range(20_000))

    async def check() -> None:
        queue = _queue()
        before = await table_counts(db.raw)
        with pytest.raises(InvalidArgument, match="shorter"):
            await db.client.spawn(queue, "job", None, SpawnOptions(idempotency_key=incompressible))
        assert await table_counts(db.raw) == before
        await db.client.spawn(queue, "job", None)
        [claim] = await db.client.claim(queue, "w1", 60)
        with pytest.raises(InvalidArgument, match="shorter"):
            await db.client.set_checkpoint(queue, claim.run_id, incompressible, 1)
        assert await db.raw.fetchval("select count(*) from durable.checkpoints") == 0

    db.run(check)
