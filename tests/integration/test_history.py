"""Hot and cold: finished tasks move to the history tables, and every read and write of finished
work answers as before (sql/protocol/01_history.sql)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from durable.client import Client
from durable.protocol.errors import TaskNotFound
from durable.protocol.records import (
    FailureReason,
    Retention,
    SpawnOptions,
    TaskState,
    Unique,
)
from durable.runtime.history import HistoryKeeper
from durable.runtime.retention import prune, prune_rules

pytestmark = pytest.mark.anyio

Q = "hist"


async def _where(raw: asyncpg.Connection, task_id: uuid.UUID) -> str:
    """'hot', 'history' or 'gone'."""
    if await raw.fetchval("select count(*) from durable.tasks where task_id = $1", task_id):
        return "hot"
    if await raw.fetchval("select count(*) from durable.tasks_history where task_id = $1", task_id):
        return "history"
    return "gone"


async def _finished_work(client: Client) -> dict[str, uuid.UUID]:
    """A completed task with a checkpoint and a key, a failed one, a cancelled one, a live one."""
    done = await client.spawn(Q, "ship", {"n": 1}, SpawnOptions(idempotency_key="k-done"))
    failed = await client.spawn(Q, "charge", {"n": 2}, SpawnOptions(max_attempts=1))
    (c1,) = await client.claim(Q, "w", 30)
    await client.set_checkpoint(Q, c1.run_id, "load", 1)
    await client.set_checkpoint(Q, c1.run_id, "save", 2)
    await client.complete(Q, c1.run_id, "ok")
    (c2,) = await client.claim(Q, "w", 30)
    await client.fail(Q, c2.run_id, {"type": "ValueError", "message": "bad"})
    cancelled = await client.spawn(Q, "ship", {"n": 3})
    await client.cancel(Q, cancelled.task_id)
    live = await client.spawn(Q, "ship", {"n": 4})
    return {
        "done": done.task_id,
        "failed": failed.task_id,
        "cancelled": cancelled.task_id,
        "live": live.task_id,
    }


async def _answers(client: Client, ids: dict[str, uuid.UUID]) -> dict[str, Any]:
    return {
        "tasks": {k: await client.get_task(Q, v) for k, v in ids.items()},
        "results": {k: await client.get_result(Q, v) for k, v in ids.items()},
        "checkpoints": await client.get_checkpoints(Q, ids["done"]),
        "failed_work": await client.failed_work(),
        "failure_groups": await client.failure_groups(),
        "failed_runs": await client.list_failed_runs(),
        "browse": await client.list_tasks(),
        "browse_failed": await client.list_tasks(state=TaskState.FAILED),
        "browse_key": await client.list_tasks(idempotency_key="k-done"),
        "counts": await client.queue_counts(),
    }


async def test_the_hot_and_history_tables_keep_the_same_columns(raw: asyncpg.Connection) -> None:
    # a migration that adds a column to a hot table adds it to its history table too
    query = """
        select array_agg(column_name::text || ' ' || data_type || ' ' || is_nullable
                         order by ordinal_position)
          from information_schema.columns where table_schema = 'durable' and table_name = $1
    """
    for table in ("tasks", "runs", "checkpoints"):
        hot = await raw.fetchval(query, table)
        assert hot
        assert await raw.fetchval(query, f"{table}_history") == hot


async def test_a_moved_task_reads_the_same_everywhere(
    client: Client, raw: asyncpg.Connection
) -> None:
    ids = await _finished_work(client)
    before = await _answers(client, ids)
    assert await client.move_all_to_history() == 3
    assert {k: await _where(raw, v) for k, v in ids.items()} == {
        "done": "history",
        "failed": "history",
        "cancelled": "history",
        "live": "hot",
    }
    assert await raw.fetchval("select count(*) from durable.runs_history") == 3
    assert await raw.fetchval("select count(*) from durable.checkpoints_history") == 2
    assert await _answers(client, ids) == before
    result = await client.result(Q, ids["done"])
    assert result.result == "ok"


async def test_history_rows_land_in_the_partition_of_their_day(
    client: Client, raw: asyncpg.Connection
) -> None:
    assert await client.ensure_history_partitions(2) == 3
    assert await client.ensure_history_partitions(2) == 0  # made already
    ids = await _finished_work(client)
    await client.move_all_to_history()
    day = datetime.now(UTC).strftime("%Y%m%d")
    partition = await raw.fetchval("select to_regclass($1)", f"durable.tasks_history_{day}")
    assert (
        await raw.fetchval(
            "select count(*) from durable.tasks_history where tableoid = $1::regclass", partition
        )
        == 3
    )
    assert await raw.fetchval("select count(*) from durable.tasks_history_default") == 0
    assert await _where(raw, ids["done"]) == "history"


async def test_retry_replay_and_discard_bring_a_finished_task_back(
    client: Client, raw: asyncpg.Connection
) -> None:
    ids = await _finished_work(client)
    await client.move_all_to_history()

    retried = await client.retry(Q, ids["failed"])
    assert retried.attempt == 2
    assert await _where(raw, ids["failed"]) == "hot"
    assert (await client.get_result(Q, ids["failed"])).state is TaskState.PENDING

    replayed = await client.replay(Q, ids["done"], from_step="save")
    assert replayed.attempt == 2
    assert [c.step_name for c in await client.get_checkpoints(Q, ids["done"])] == ["load"]
    claims = await client.claim(Q, "w", 30, qty=10)
    assert {c.task_id for c in claims} >= {ids["failed"], ids["done"]}

    assert await client.discard(Q, ids["cancelled"]) is TaskState.CANCELLED
    assert ids["cancelled"] not in {w.task_id for w in await client.failed_work()}
    with pytest.raises(Exception, match="discarded"):
        await client.retry(Q, ids["cancelled"])
    # a write that fails leaves the task where it was
    await client.move_all_to_history()
    with pytest.raises(Exception, match="cannot be cancelled"):
        await client.cancel(Q, ids["cancelled"])
    assert await _where(raw, ids["cancelled"]) == "history"
    with pytest.raises(TaskNotFound):
        await client.retry("other", ids["cancelled"])


async def test_keys_unique_specs_and_dependencies_see_finished_tasks(
    client: Client, raw: asyncpg.Connection
) -> None:
    ids = await _finished_work(client)
    unique = SpawnOptions(unique=Unique(keys=["n"], states=["completed"]))
    first = await client.spawn(Q, "ship", {"n": 9}, unique)
    (claim,) = [c for c in await client.claim(Q, "w", 30, qty=5) if c.task_id == first.task_id]
    await client.complete(Q, claim.run_id, None)
    await client.move_all_to_history()
    assert await _where(raw, first.task_id) == "history"

    again = await client.spawn(Q, "ship", {"n": 1}, SpawnOptions(idempotency_key="k-done"))
    assert (again.task_id, again.created) == (ids["done"], False)
    many = await client.spawn_many(
        Q,
        [
            ("ship", None, SpawnOptions(idempotency_key="k-done")),
            ("ship", None, SpawnOptions(idempotency_key="k-new", priority=1)),
            ("ship", None, SpawnOptions(idempotency_key="k-new", priority=1)),
        ],
    )
    assert [(m.task_id, m.created) for m in many[:1]] == [(ids["done"], False)]
    assert (many[1].created, many[2].created) == (True, False)
    assert many[2].task_id == many[1].task_id
    duplicate = await client.spawn(Q, "ship", {"n": 9}, unique)
    assert (duplicate.task_id, duplicate.created) == (first.task_id, False)

    after_done = await client.spawn(Q, "next", None, SpawnOptions(depends_on=[ids["done"]]))
    assert (await client.get_task(Q, after_done.task_id)).pending_dependencies == []
    after_failed = await client.spawn(Q, "next", None, SpawnOptions(depends_on=[ids["failed"]]))
    assert (await client.get_result(Q, after_failed.task_id)).state is TaskState.CANCELLED
    # retrying the failed dependency (in history) revives its cancelled dependent
    await client.move_all_to_history()
    assert await _where(raw, after_failed.task_id) == "history"
    revived = await client.retry(Q, ids["failed"])
    assert [d.task_id for d in revived.revived] == [after_failed.task_id]
    assert await _where(raw, after_failed.task_id) == "hot"


async def test_the_keeper_moves_after_the_delay_and_vacuums_when_it_owns_the_tables(
    client: Client, raw: asyncpg.Connection
) -> None:
    ids = await _finished_work(client)
    keeper = HistoryKeeper(
        client, 10.0, interval_s=1.0, vacuum_interval_s=0.01, batch=2, min_age_s=3600
    )
    assert await keeper.round() == 0  # not an hour old yet
    keeper.min_age_s = 0
    assert await keeper.round() == 3  # two batches
    assert await _where(raw, ids["done"]) == "history"
    assert await client.may_vacuum_hot_tables()  # the suite's role is a superuser
    last = await raw.fetchval(
        "select last_vacuum from pg_stat_user_tables where relname = 'runs'"
        " and schemaname = 'durable'"
    )
    assert last is not None


async def test_retention_drops_a_whole_day_of_history(
    client: Client, dsn: str, raw: asyncpg.Connection
) -> None:
    await client.ensure_history_partitions(0)
    ids = await _finished_work(client)
    await client.move_all_to_history()
    day = datetime.now(UTC).strftime("%Y%m%d")
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    live = ids.pop("live")
    rules = prune_rules(Retention(completed=3600, failed=3600, cancelled=3600), {})
    async with Client(dsn, server_settings={"durable.fake_now": later}) as then:
        # the live task of that day keeps its partition (the empty days after it go)
        await then.drop_history_partitions(3600)
        assert await raw.fetchval("select to_regclass($1)", f"durable.tasks_history_{day}")
        await client.cancel(Q, live)
        await then.move_all_to_history()
        assert await prune(then, rules) == 0  # the whole day went with its partition
    assert await raw.fetchval("select to_regclass($1)", f"durable.tasks_history_{day}") is None
    for task_id in [*ids.values(), live]:
        with pytest.raises(TaskNotFound):
            await client.get_task(Q, task_id)
    assert await raw.fetchval("select count(*) from durable.task_keys") == 0
    again = await client.spawn(Q, "ship", None, SpawnOptions(idempotency_key="k-done"))
    assert again.created


async def test_prune_deletes_history_rows_and_their_keys(
    client: Client, dsn: str, raw: asyncpg.Connection
) -> None:
    ids = await _finished_work(client)
    await client.move_all_to_history()
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    async with Client(dsn, server_settings={"durable.fake_now": later}) as then:
        assert await then.prune_tasks(3600, [TaskState.COMPLETED]) == 1
    with pytest.raises(TaskNotFound):
        await client.get_task(Q, ids["done"])
    assert await raw.fetchval("select count(*) from durable.task_keys") == 0
    assert await raw.fetchval("select count(*) from durable.checkpoints_history") == 0


async def test_writes_and_keyed_spawns_racing_the_mover_lose_nothing(
    client: Client, dsn: str, raw: asyncpg.Connection
) -> None:
    n = 30
    failed = []
    keyed = {}
    for i in range(n):
        info = await client.spawn(Q, "charge", i, SpawnOptions(max_attempts=1))
        (claim,) = await client.claim(Q, "w", 30)
        await client.fail(Q, claim.run_id, {"message": "x"}, FailureReason.ERRORED)
        failed.append(info.task_id)
        key = await client.spawn(Q, "ship", i, SpawnOptions(idempotency_key=f"key-{i}"))
        (claim,) = await client.claim(Q, "w", 30)
        await client.complete(Q, claim.run_id, i)
        keyed[f"key-{i}"] = key.task_id
    total = await raw.fetchval("select count(*) from durable.all_tasks")

    async with Client(dsn) as mover, Client(dsn) as other:

        async def move() -> None:
            for _ in range(200):
                await mover.move_to_history(batch=2)
                await anyio.lowlevel.checkpoint()

        async def retry_half() -> None:
            for task_id in failed[: n // 2]:
                await client.retry(Q, task_id)

        async def discard_half() -> None:
            for task_id in failed[n // 2 :]:
                await other.discard(Q, task_id)

        async def respawn() -> None:
            for key, task_id in keyed.items():
                again = await other.spawn(Q, "ship", None, SpawnOptions(idempotency_key=key))
                assert (again.task_id, again.created) == (task_id, False)

        async with anyio.create_task_group() as tg:
            tg.start_soon(move)
            tg.start_soon(retry_half)
            tg.start_soon(discard_half)
            tg.start_soon(respawn)

    assert await raw.fetchval("select count(*) from durable.all_tasks") == total
    for task_id in failed[: n // 2]:
        record = await client.get_task(Q, task_id)
        assert (record.state, record.attempt) == (TaskState.PENDING, 2)
    for task_id in failed[n // 2 :]:
        assert (await client.get_task(Q, task_id)).discarded_at is not None
    assert not {w.task_id for w in await client.failed_work()} & set(failed[n // 2 :])
    # each task is in exactly one place, its runs with it
    assert (
        await raw.fetchval(
            "select count(*) from durable.tasks t join durable.tasks_history h using (task_id)"
        )
        == 0
    )
    assert (
        await raw.fetchval(
            "select count(*) from durable.runs_history r"
            " where not exists (select 1 from durable.tasks_history t where t.task_id = r.task_id)"
        )
        == 0
    )


async def _finished_in_hot_tables(raw: asyncpg.Connection, n: int) -> None:
    """``n`` completed tasks, a run each, ended a minute ago, in the hot tables (set-based: the
    rows completion leaves, without n round trips)."""
    await raw.execute(
        """
        with t as (
            insert into durable.tasks (task_id, queue, task_name, params, created_at,
                                       scheduled_at, state, finished_at)
            select durable.uuidv7(), $2, 'ship', '{}', now() - interval '2 min',
                   now() - interval '2 min', 'completed', now() - interval '1 min'
              from generate_series(1, $1)
            returning task_id)
        insert into durable.runs (run_id, task_id, queue, attempt, state, available_at,
                                  created_at, task_name, finished_at)
        select durable.uuidv7(), t.task_id, $2, 1, 'completed', now() - interval '2 min',
               now() - interval '2 min', 'ship', now() - interval '1 min'
          from t
        """,
        n,
        Q,
    )


_BLOCKS_READ = """
select sum(coalesce(heap_blks_hit, 0) + coalesce(heap_blks_read, 0)
           + coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0))
  from pg_statio_user_tables where schemaname = 'durable' and relname in ('tasks', 'runs')
"""


async def test_a_move_reads_each_task_once_when_the_hot_tables_look_empty(
    raw: asyncpg.Connection,
) -> None:
    # a vacuum that finds the hot tables empty leaves their pages and says "0 rows"
    # (reltuples), so until the next analyze the planner counts every row there as 1: the move
    # must not then plan a join that walks a whole index per task
    await raw.execute("select durable.ensure_history_partitions()")
    await _finished_in_hot_tables(raw, 20_000)
    assert await raw.fetchval("select durable.move_to_history(100000)") == 20_000
    await raw.execute("vacuum (truncate false) durable.tasks, durable.runs")
    looks = await raw.fetch(
        "select relpages, reltuples from pg_class"
        " where oid in ('durable.tasks'::regclass, 'durable.runs'::regclass)"
    )
    assert all(r["relpages"] > 0 and r["reltuples"] == 0 for r in looks)
    await _finished_in_hot_tables(raw, 20_000)

    await raw.execute("select pg_stat_force_next_flush()")
    before = await raw.fetchval(_BLOCKS_READ)
    assert await raw.fetchval("select durable.move_to_history(500)") == 500
    await raw.execute("select pg_stat_force_next_flush()")
    blocks = await raw.fetchval(_BLOCKS_READ) - before
    # by index or one scan: a few blocks a task (a walk per task: hundreds a task)
    assert blocks < 20 * 500, blocks


async def test_a_burst_after_a_vacuum_of_empty_hot_tables_gets_fresh_statistics(
    raw: asyncpg.Connection, client: Client
) -> None:
    # the statistics say "empty" (a vacuum found the tables so), then 3,000 runs arrive: the
    # next upkeep round analyzes, and a round with fresh statistics does nothing
    await raw.execute("vacuum (truncate false) durable.tasks, durable.runs")
    # spawned on this connection, whose statistics it flushes now (a pool connection's reach
    # the counters within a second or so: the workers' upkeep runs every second)
    await raw.execute(
        "select count(*) from durable.spawn_many($1, (select jsonb_agg(jsonb_build_object("
        "'task_name', 'ship', 'params', g)) from generate_series(1, 3000) g))",
        Q,
    )
    await raw.execute("select pg_stat_force_next_flush()")
    assert await client.refresh_hot_stats() is True
    counted = await raw.fetchval(
        "select min(reltuples) from pg_class"
        " where oid in ('durable.tasks'::regclass, 'durable.runs'::regclass)"
    )
    assert counted == 3000
    assert await client.refresh_hot_stats() is False
