"""The one owner of database access: an asyncpg pool, one method per SQL function, rows -> records.

Nothing else in durable holds SQL (migrations aside). Every query text is a constant, so
asyncpg's statement cache hits; user values travel only as parameters. Driver errors become
durable's own errors here, ``from exc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

import anyio
import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from durable.protocol import migrate as _migrate
from durable.protocol.codec import RawJson, decode_jsonb, encode_json, encode_jsonb
from durable.protocol.cron import Missed, ScheduleSource
from durable.protocol.errors import (
    BatchNotFound,
    DatabaseUnavailable,
    InvalidArgument,
    InvalidQueueName,
    InvalidState,
    LeaseLost,
    NotSerializable,
    SchemaError,
    TaskNotFound,
)
from durable.protocol.records import (
    BatchInfo,
    BatchRecord,
    Checkpoint,
    Claim,
    CronSchedule,
    CronSchedules,
    DependencyResult,
    Dependent,
    FailedRun,
    FailedWork,
    FailedWorkState,
    Failure,
    FailureGroup,
    FailureReason,
    FlowMinute,
    PausedQueue,
    Progress,
    QueueCount,
    QueueDepth,
    ReasonClass,
    Recovery,
    RetryInfo,
    RunRecord,
    RunState,
    SpawnInfo,
    TaskRecord,
    TaskResult,
    TaskState,
    TaskSummary,
    WorkerInfo,
)

CHANNEL_WORK: Final = "durable_work"
CHANNEL_DONE: Final = "durable_done"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without a round trip: the store never leaves session state behind
    (no LISTEN, advisory lock, cursor or SET on pool connections; migrate unlocks its lock)."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=encode_jsonb,
        decoder=decode_jsonb,
        format="binary",
    )


# --- queries: one per SQL function --------------------------------------------------------------
_SPAWN = "select * from durable.spawn($1, $2, $3, $4)"
_IN_RECOVERY = "select pg_is_in_recovery()"  # a hot standby: read-only, never migrated
_SPAWN_MANY = "select * from durable.spawn_many($1, $2)"
_CLAIM = (
    "select run_id, task_id, task_name, params, headers, attempt, max_attempts, timeout_s,"
    " heartbeat_timeout_s, lease_expires_at, has_checkpoints"
    " from durable.claim($1, $2, $3, $4, $5, $6, $7, $8)"
)
_COMPLETE = "select durable.complete($1, $2, $3)"
_COMPLETE_RUNS = "select run_id, completed from durable.complete_runs($1, $2, $3)"
_FAIL = "select durable.fail($1, $2, $3, $4, $5, $6)"
_EXTEND_CLAIM = "select durable.extend_claim($1, $2, $3)"
_EXTEND_CLAIMS = "select lost_run_id from durable.extend_claims($1, $2, $3, $4, $5, $6)"
_SET_CHECKPOINT = "select durable.set_checkpoint($1, $2, $3, $4, $5)"
_SET_CHECKPOINTS = "select run_id, written from durable.set_checkpoints($1, $2, $3, $4)"
_GET_CHECKPOINTS = "select * from durable.get_checkpoints($1, $2)"
_SCHEDULE_RUN = "select durable.schedule_run($1, $2, $3)"
_CANCEL = "select durable.cancel($1, $2)"
_RETRY = "select * from durable.retry($1, $2, $3, $4)"
_REVIVABLE_DEPENDENTS = "select * from durable.revivable_dependents($1)"
_GET_TASK = "select durable.get_task($1, $2)"
_GET_RESULT = "select * from durable.get_result($1, $2)"
_REGISTER_WORKER = "select durable.register_worker($1, $2, $3, $4, $5, $6)"
_WORKER_HEARTBEAT = "select durable.worker_heartbeat($1, $2)"
_STOP_WORKER = "select durable.stop_worker($1)"
_QUEUE_COUNTS = "select * from durable.queue_counts($1)"
_LIST_FAILED_RUNS = "select * from durable.list_failed_runs($1, $2, $3)"
_SLEEP = "select durable.sleep($1, $2, $3, $4, $5)"
_AWAIT_EVENT = "select status, payload from durable.await_event($1, $2, $3, $4, $5)"
_AWAIT_TASK = "select status, outcome from durable.await_task($1, $2, $3, $4, $5)"
_EMIT_EVENT = "select durable.emit_event($1, $2)"
_AWAIT_TASKS = "select status, outcomes from durable.await_tasks($1, $2, $3, $4, $5)"
_SPAWN_BATCH = (
    "select batch_id, batch_created, task_id, run_id, attempt, created"
    " from durable.spawn_batch($1, $2, $3)"
)
_GET_BATCH = "select durable.get_batch($1)"
_GET_DEPENDENCY_RESULTS = (
    "select task_id, task_name, state, result from durable.get_dependency_results($1, $2)"
)
_SEND_MESSAGE = "select durable.send_message($1, $2, $3)"
_RECEIVE_MESSAGE = "select status, payload from durable.receive_message($1, $2, $3, $4, $5)"
_SET_STATE = "select durable.set_state($1, $2, $3, $4)"
_GET_STATE = "select key, value, updated_at from durable.get_state($1, $2, $3)"
_DECIDE_PATCH = "select durable.decide_patch($1, $2, $3, $4)"
_SET_PROGRESS = "select durable.set_progress($1, $2, $3, $4)"
_CANCEL_BY = "select durable.cancel_by($1, $2, $3)"
_SET_LIMIT = "select durable.set_limit($1, $2, $3, $4, $5, $6)"
_PRUNE_TASKS = "select durable.prune_tasks($1, $2, $3, $4, $5)"
_PRUNE_BOOKKEEPING = "select durable.prune_bookkeeping($1, $2)"
_MOVE_TO_HISTORY = "select durable.move_to_history($1, $2)"
_REFRESH_HOT_STATS = "select durable.refresh_hot_stats()"
_ENSURE_HISTORY_PARTITIONS = "select durable.ensure_history_partitions($1)"
_DROP_HISTORY_PARTITIONS = "select durable.drop_history_partitions($1)"
# VACUUM needs the table's owner (PostgreSQL 15; a superuser or the database's owner may too):
# the workers vacuum the hot tables after moves and history after retention only when their role
# may (durable_worker may not). One check for both: all six have one owner, the role that
# migrated (history's day partitions too: ensure_history_partitions runs as its owner).
_MAY_VACUUM_HOT_TABLES = """
select bool_and(pg_has_role(current_user, c.relowner, 'USAGE'))
       or (select r.rolsuper from pg_roles r where r.rolname = current_user)
       or (select pg_has_role(current_user, d.datdba, 'USAGE') from pg_database d
            where d.datname = current_database())
  from pg_class c
 where c.oid in ('durable.tasks'::regclass, 'durable.runs'::regclass,
                 'durable.checkpoints'::regclass, 'durable.tasks_history'::regclass,
                 'durable.runs_history'::regclass, 'durable.checkpoints_history'::regclass)
"""
# not in a transaction nor a function: a plain statement of its own. TRUNCATE false: cutting a
# table's empty tail takes an ACCESS EXCLUSIVE lock that stalls every claim and completion while
# VACUUM waits for it (the soak saw Timeout:VacuumTruncate), and the hot tables refill those pages
_VACUUM_HOT_TABLES = (
    "vacuum (skip_locked, truncate false) durable.runs, durable.tasks, durable.checkpoints"
)
# after retention deleted rows of history (every partition: VACUUM skips the pages it need not read)
_VACUUM_HISTORY_TABLES = (
    "vacuum (skip_locked, truncate false)"
    " durable.tasks_history, durable.runs_history, durable.checkpoints_history"
)
_FAILED_WORK = "select * from durable.failed_work($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_FAILURE_GROUPS = "select * from durable.failure_groups($1, $2, $3, $4, $5, $6, $7, $8)"
_FINISHED_COUNTS = "select * from durable.finished_counts($1)"
_REPLAY = "select * from durable.replay($1, $2, $3, $4)"
_DISCARD = "select durable.discard($1, $2)"
_LIST_TASKS = "select * from durable.list_tasks($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
_QUEUE_DEPTH = "select * from durable.queue_depth()"
_LIST_WORKERS = "select * from durable.list_workers($1)"
_ROLL_UP_FLOW = "select durable.roll_up_flow($1)"
_FLOW = "select * from durable.flow($1, $2)"
_ENDED_COUNTS = "select * from durable.ended_counts($1)"
_PAUSE_QUEUE = "select durable.pause_queue($1)"
_RESUME_QUEUE = "select durable.resume_queue($1)"
_LIST_PAUSED_QUEUES = "select queue, paused_at from durable.list_paused_queues()"
_SET_CRON_SCHEDULE = "select durable.set_cron_schedule($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_REMOVE_CRON_SCHEDULE = "select durable.remove_cron_schedule($1)"
_PAUSE_CRON_SCHEDULE = "select durable.pause_cron_schedule($1)"
_RESUME_CRON_SCHEDULE = "select durable.resume_cron_schedule($1)"
_LIST_CRON_SCHEDULES = "select durable.list_cron_schedules($1)"
_FIRE_CRON = "select task_id, created from durable.fire_cron($1, $2)"
_TERMINATE_OTHERS = """
select pid, pg_terminate_backend(pid) as terminated from pg_stat_activity
 where datname = current_database() and pid <> pg_backend_pid()
   and backend_type = 'client backend'
"""
_SESSIONS_LEFT = "select count(*) from pg_stat_activity where pid = any($1::int[])"

_SQLSTATE_LEASE_LOST = "DU001"
_SQLSTATE_NOT_FOUND = "DU002"
_SQLSTATE_INVALID_STATE = "DU003"
_SQLSTATE_QUEUE = "DU004"
_SQLSTATE_ARGUMENT = "DU005"
_SQLSTATE_BATCH_NOT_FOUND = "DU006"
# 22003 numeric out of range, 22007/22008 a bad or overflowing timestamp, 22P02 not a number
_SQLSTATES_ARGUMENT = {"22003", "22007", "22008", "22P02"}
# Text arguments (task, step and worker names, idempotency keys) PostgreSQL cannot hold, with a
# hint: 22000 is asyncpg's own "invalid input for query argument" (a lone surrogate cannot be
# encoded as UTF-8), 22021 a NUL byte in text, 54000 a value over PostgreSQL's limits (a key too
# long for its index).
_SQLSTATES_TEXT_ARGUMENT = {
    "22000": "names and keys must be valid Unicode text (no lone surrogates)",
    "22021": "names and keys must not contain NUL (\\x00)",
    "54000": "use a shorter idempotency key, step name or worker id",
}
# 22P05: \u0000 in jsonb (encode_json refuses it first; a value built in SQL can still hit it)
_SQLSTATES_NOT_SERIALIZABLE = {"22P05"}
# connection exceptions, operator intervention (shutdown, terminated backend), and 53300: the
# server is at max_connections (a new pool connection is refused; it passes like an outage)
_SQLSTATES_UNAVAILABLE_PREFIXES = ("08", "57P", "53300")


def describe_dsn(dsn: str) -> tuple[str, int | None]:
    """Host and port a DSN points at, for messages (the password never appears)."""
    parsed = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qs(parsed.query)
    host = parsed.hostname or (query.get("host") or ["localhost"])[0]
    try:
        port = parsed.port or int((query.get("port") or ["5432"])[0])
    except ValueError:
        port = None
    return host, port


def _unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    host, port = describe_dsn(dsn)
    return DatabaseUnavailable(
        f"cannot reach PostgreSQL at {host}:{port} — {type(exc).__name__}: {exc}",
        host=host,
        port=port,
    )


def _map_postgres_error(
    exc: asyncpg.PostgresError,
    unavailable: Callable[[], DatabaseUnavailable],
    *,
    run_id: uuid.UUID | None = None,
    task_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
) -> Exception:
    """The durable error a PostgreSQL error means (``exc`` itself when none does)."""
    state = exc.sqlstate or ""
    message = getattr(exc, "message", str(exc))
    detail = getattr(exc, "detail", None) or ""
    if state == _SQLSTATE_LEASE_LOST:
        return LeaseLost(run_id, detail)
    if state == _SQLSTATE_NOT_FOUND:
        return TaskNotFound(_named_id(message) or task_id)
    if state == _SQLSTATE_BATCH_NOT_FOUND:
        return BatchNotFound(batch_id)
    if state == _SQLSTATE_INVALID_STATE:
        return InvalidState(message, state=detail or None)
    if state == _SQLSTATE_QUEUE:
        return InvalidQueueName(message.removeprefix("invalid queue name: "))
    if state == _SQLSTATE_ARGUMENT or state in _SQLSTATES_ARGUMENT:
        return InvalidArgument(message)
    if state in _SQLSTATES_TEXT_ARGUMENT:
        return InvalidArgument(f"{message} — {_SQLSTATES_TEXT_ARGUMENT[state]}")
    if state in _SQLSTATES_NOT_SERIALIZABLE:
        return NotSerializable("a value", message)
    if state.startswith(_SQLSTATES_UNAVAILABLE_PREFIXES):
        return unavailable()
    return exc


#: How long the kept connection may sit unused before the pool gets it back: between one and
#: two of these after the last statement that used it.
KEEP_S: Final = 0.002


class _KeptConnection:
    """A pool connection kept across statements sent one after another.

    asyncpg's pool hands out and takes back a connection for every statement: a future, a timer
    and a shielded task (one more turn of the event loop) each time, about a third of the
    client's time for a lone spawn. A statement sent on :meth:`take`'s connection gives it back
    here (:meth:`give_back`), not to the pool: a caller that sends its next one soon after (a
    loop of spawns, one at a time) reuses it without any of that, nor a callback per statement.
    A timer gives it to the pool once :data:`KEEP_S` went by without a statement using it. A
    statement that comes while it is in use takes a pool connection as usual; an error gives
    the kept one back to the pool at once (the pool's release deals with a connection left
    mid-query).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: PoolConnectionProxy[Any] | None = None
        self._busy = False  # the kept connection is out
        self._used = False  # taken since the timer was set
        self._timer: asyncio.TimerHandle | None = None
        self._releases: set[asyncio.Task[None]] = set()

    async def take(self) -> PoolConnectionProxy[Any]:
        """A connection for one statement: the kept one when it is free (from the pool the
        first time), else one of the pool's; hand it to :meth:`give_back` afterwards."""
        if self._busy:  # another statement has it: a pool connection of its own
            return await self._pool.acquire()
        self._busy = True
        self._used = True
        if self._conn is None:
            try:
                self._conn = await self._pool.acquire()
            except BaseException:
                self._busy = False
                raise
            if self._timer is None:
                self._set_timer()
        return self._conn

    async def give_back(self, conn: PoolConnectionProxy[Any], *, failed: bool = False) -> None:
        """``conn`` after its statement: kept for the next one, or (a pool connection, or the
        statement ``failed``) back to the pool."""
        if conn is not self._conn:
            await self._pool.release(conn)
            return
        self._busy = False
        if failed:
            self._conn = None
            await self._pool.release(conn)

    def _set_timer(self) -> None:
        self._used = False
        self._timer = asyncio.get_running_loop().call_later(KEEP_S, self._check)

    def _check(self) -> None:
        """Give the connection back to the pool unless a statement took it since last time."""
        self._timer = None
        conn = self._conn
        if conn is None:
            return
        if self._busy or self._used:
            self._set_timer()
            return
        self._conn = None
        task = asyncio.get_running_loop().create_task(self._pool.release(conn))
        self._releases.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releases.discard(task)
        if not task.cancelled():
            task.exception()  # a release that failed closed the connection: nothing to do

    async def close(self) -> None:
        """Give the connection back now (before the pool closes, which waits for it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn, self._conn = self._conn, None
        if conn is not None and not self._busy:
            await self._pool.release(conn)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)


class Store:
    """An asyncpg pool and the protocol's SQL functions as typed methods."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn
        self._kept = _KeptConnection(pool)  # for spawns sent one after another

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 30.0,
        statement_cache_size: int = 100,
        server_settings: Mapping[str, str] | None = None,
        migrate: bool = True,
    ) -> Store:
        """Connect; apply migrations (or, with ``migrate=False``, refuse an old schema). A hot
        standby is never migrated (it follows its primary): its schema is checked instead."""
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise DatabaseUnavailable(
                f"not a PostgreSQL DSN: {dsn[:40]!r} — use postgresql://user@host:port/dbname"
            )
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                statement_cache_size=statement_cache_size,
                server_settings=dict(server_settings or {}),
                init=_init_connection,
                reset=_keep_session,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(dsn, exc) from exc
        except ValueError as exc:  # asyncpg's DSN parser
            raise DatabaseUnavailable(f"not a valid PostgreSQL DSN: {exc}") from exc
        store = cls(pool, dsn)
        try:
            async with store._translate(), pool.acquire() as conn:
                if migrate and not await conn.fetchval(_IN_RECOVERY):
                    await _migrate.migrate(conn)
                else:
                    await _migrate.check_schema(conn)
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self, *, timeout: float | None = None) -> None:
        """Close the pool; with ``timeout``, drop its connections if closing them takes longer
        (an unreachable server never answers the goodbye)."""
        if timeout is None:
            await self._kept.close()
            await self._pool.close()
            return
        try:
            await asyncio.wait_for(self._close_pool(), timeout)
        except TimeoutError:
            self._pool.terminate()

    async def _close_pool(self) -> None:
        await self._kept.close()
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _translate(
        self,
        *,
        run_id: uuid.UUID | None = None,
        task_id: uuid.UUID | None = None,
        batch_id: uuid.UUID | None = None,
    ) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if (error := await self._translated(exc, run_id, task_id, batch_id)) is None:
                raise
            raise error from exc

    async def _translated(
        self,
        exc: Exception,
        run_id: uuid.UUID | None = None,
        task_id: uuid.UUID | None = None,
        batch_id: uuid.UUID | None = None,
    ) -> Exception | None:
        """The durable error a driver error raised by a statement means (None: not a driver
        error, raise it as it is)."""
        if isinstance(exc, asyncpg.PostgresError):
            return self._map_postgres_error(exc, run_id=run_id, task_id=task_id, batch_id=batch_id)
        if isinstance(exc, OSError | asyncpg.InterfaceError | TimeoutError):
            return _unavailable(self.dsn, exc)
        if isinstance(exc, asyncpg.InternalClientError):
            # a connection whose protocol state broke when its server went away mid-operation
            # (seen after pg_terminate_backend): replace every pooled connection, then report
            # the database unavailable so the caller retries on a fresh one
            await self._pool.expire_connections()
            return _unavailable(self.dsn, exc)
        return None

    def _map_postgres_error(
        self,
        exc: asyncpg.PostgresError,
        *,
        run_id: uuid.UUID | None,
        task_id: uuid.UUID | None,
        batch_id: uuid.UUID | None = None,
    ) -> Exception:
        return _map_postgres_error(
            exc,
            lambda: _unavailable(self.dsn, exc),
            run_id=run_id,
            task_id=task_id,
            batch_id=batch_id,
        )

    # --- the protocol ---------------------------------------------------------------------------

    async def spawn(
        self, queue: str, task_name: str, params: Any, options: Mapping[str, Any] | RawJson
    ) -> SpawnInfo:
        params_json = encode_json(params, "params")
        options_json = encode_json(
            options if isinstance(options, RawJson) else dict(options), "options"
        )
        # the statements of spawns sent one after another: no context manager (an async
        # generator each) on this path, errors translated as _translate does
        try:
            conn = await self._kept.take()
            try:
                row = await conn.fetchrow(_SPAWN, queue, task_name, params_json, options_json)
            except BaseException:
                await self._kept.give_back(conn, failed=True)
                raise
            await self._kept.give_back(conn)
        except Exception as exc:
            if (error := await self._translated(exc)) is None:
                raise
            raise error from exc
        assert row is not None
        return _spawn_info(row)

    async def spawn_many(
        self, queue: str, items: Sequence[tuple[str, Any, Mapping[str, Any]]]
    ) -> list[SpawnInfo]:
        docs = [
            {"task_name": name, "params": p, "options": o if isinstance(o, dict) else dict(o)}
            for name, p, o in items
        ]
        payload = encode_json(docs, "params")
        async with self._translate():
            rows = await self._pool.fetch(_SPAWN_MANY, queue, payload)
        return [_spawn_info(r) for r in rows]

    async def spawn_encoded(
        self, queue: str, items: Sequence[tuple[str, RawJson, RawJson]]
    ) -> list[SpawnInfo]:
        """``spawn_many`` of items already encoded (``(task_name, params, options)``, each
        checked by :func:`encode_json`): the batch is joined, not encoded again."""
        payload = RawJson(
            b"["
            + b",".join(
                b'{"task_name":%b,"params":%b,"options":%b}' % (orjson.dumps(name), p, o)
                for name, p, o in items
            )
            + b"]"
        )
        async with self._translate():
            rows = await self._pool.fetch(_SPAWN_MANY, queue, payload)
        return [_spawn_info(r) for r in rows]

    async def claim(
        self,
        queue: str,
        worker_id: str,
        claim_timeout: float,
        qty: int,
        code_version: str | None = None,
        started: Sequence[uuid.UUID] = (),
        skip_names: Sequence[str] = (),
        slots: int | None = None,
    ) -> list[Claim]:
        async with self._translate():
            rows = await self._pool.fetch(
                _CLAIM,
                queue,
                worker_id,
                claim_timeout,
                qty,
                code_version,
                list(started) or None,
                list(skip_names) or None,
                slots,
            )
        # by position (the columns _CLAIM names): a short task's claim is on the hot path
        return [
            Claim(
                run_id=run_id,
                task_id=task_id,
                queue=queue,
                task_name=task_name,
                params=params,
                headers=headers,
                attempt=attempt,
                max_attempts=max_attempts,
                timeout=timeout_s,
                heartbeat_timeout=heartbeat_timeout_s,
                lease_expires_at=lease_expires_at,
                has_checkpoints=has_checkpoints,
            )
            for (
                run_id,
                task_id,
                task_name,
                params,
                headers,
                attempt,
                max_attempts,
                timeout_s,
                heartbeat_timeout_s,
                lease_expires_at,
                has_checkpoints,
            ) in rows
        ]

    async def complete(self, queue: str, run_id: uuid.UUID, result: Any) -> None:
        result_json = encode_json(result, "result")
        async with self._translate(run_id=run_id):
            await self._pool.execute(_COMPLETE, queue, run_id, result_json)

    async def complete_runs(
        self, queue: str | None, outcomes: Sequence[tuple[uuid.UUID, Any]]
    ) -> dict[uuid.UUID, bool]:
        """Complete many runs in one statement; map each run to whether it completed (False:
        its lease was lost). Results must already be encoded (:func:`encode_json`)."""
        run_ids = [run_id for run_id, _ in outcomes]
        results = [encode_json(result, "result") for _, result in outcomes]
        async with self._translate():
            rows = await self._pool.fetch(_COMPLETE_RUNS, queue, run_ids, results)
        return {r["run_id"]: r["completed"] for r in rows}

    async def fail(
        self,
        queue: str,
        run_id: uuid.UUID,
        error: Mapping[str, Any] | None,
        reason: FailureReason,
        retry_at: datetime | None,
        retry_in: float | None = None,
    ) -> uuid.UUID | None:
        error_json = encode_json(dict(error) if error is not None else None, "error")
        async with self._translate(run_id=run_id):
            next_run: uuid.UUID | None = await self._pool.fetchval(
                _FAIL, queue, run_id, error_json, str(reason), retry_at, retry_in
            )
        return next_run

    async def extend_claim(
        self, queue: str, run_id: uuid.UUID, extend_by: float | None
    ) -> datetime:
        async with self._translate(run_id=run_id):
            lease: datetime = await self._pool.fetchval(_EXTEND_CLAIM, queue, run_id, extend_by)
        return lease

    async def extend_claims(
        self,
        worker_id: str,
        run_ids: Sequence[uuid.UUID],
        worker_ttl: float,
        busy: int | None = None,
        ahead: int | None = None,
        started: Sequence[uuid.UUID] = (),
    ) -> list[uuid.UUID]:
        async with self._translate():
            rows = await self._pool.fetch(
                _EXTEND_CLAIMS,
                worker_id,
                list(run_ids),
                worker_ttl,
                busy,
                ahead,
                list(started) or None,
            )
        return [r["lost_run_id"] for r in rows]

    async def set_checkpoint(
        self, queue: str, run_id: uuid.UUID, step: str, value: Any, extend_by: float | None
    ) -> None:
        value_json = encode_json(value, f"the value of step {step!r}")
        async with self._translate(run_id=run_id):
            await self._pool.execute(_SET_CHECKPOINT, queue, run_id, step, value_json, extend_by)

    async def set_checkpoints(
        self, queue: str | None, items: Sequence[tuple[uuid.UUID, str, Any]]
    ) -> list[bool]:
        """Record many ``(run_id, step, value)`` in one statement; for each item, whether its run
        still held its lease (False: nothing was written for it)."""
        run_ids = [run_id for run_id, _, _ in items]
        steps = [step for _, step, _ in items]
        values = [encode_json(value, f"the value of step {step!r}") for _, step, value in items]
        async with self._translate():
            rows = await self._pool.fetch(_SET_CHECKPOINTS, queue, run_ids, steps, values)
        return [bool(r["written"]) for r in rows]

    async def get_checkpoints(self, queue: str | None, task_id: uuid.UUID) -> list[Checkpoint]:
        async with self._translate(task_id=task_id):
            rows = await self._pool.fetch(_GET_CHECKPOINTS, queue, task_id)
        return [Checkpoint(r["step_name"], r["value"], r["run_id"], r["created_at"]) for r in rows]

    async def schedule_run(self, queue: str, run_id: uuid.UUID, defer_seconds: float) -> uuid.UUID:
        async with self._translate(run_id=run_id):
            next_run: uuid.UUID = await self._pool.fetchval(
                _SCHEDULE_RUN, queue, run_id, defer_seconds
            )
        return next_run

    async def cancel(self, queue: str | None, task_id: uuid.UUID) -> None:
        async with self._translate(task_id=task_id):
            await self._pool.execute(_CANCEL, queue, task_id)

    async def retry(
        self,
        queue: str | None,
        task_id: uuid.UUID,
        options: Mapping[str, Any],
        revive_dependents: bool = True,
    ) -> RetryInfo:
        options_json = encode_json(dict(options), "options")
        async with self._translate(task_id=task_id):
            rows = await self._pool.fetch(_RETRY, queue, task_id, options_json, revive_dependents)
        task, *revived = [_spawn_info(r) for r in rows]
        return RetryInfo(task.task_id, task.run_id, task.attempt, task.created, tuple(revived))

    async def revivable_dependents(self, task_ids: Sequence[uuid.UUID]) -> list[Dependent]:
        async with self._translate():
            rows = await self._pool.fetch(_REVIVABLE_DEPENDENTS, list(task_ids))
        return [
            Dependent(
                task_id=r["task_id"],
                queue=r["queue"],
                task_name=r["task_name"],
                dependency=r["dependency"],
            )
            for r in rows
        ]

    async def get_task(self, queue: str | None, task_id: uuid.UUID) -> TaskRecord:
        async with self._translate(task_id=task_id):
            doc = await self._pool.fetchval(_GET_TASK, queue, task_id)
        return _task_record(doc)

    async def get_result(self, queue: str | None, task_id: uuid.UUID) -> TaskResult[Any]:
        async with self._translate(task_id=task_id):
            row = await self._pool.fetchrow(_GET_RESULT, queue, task_id)
        assert row is not None
        return TaskResult(
            state=TaskState(row["state"]),
            result=row["result"],
            failure=Failure.from_json(row["failure"]),
        )

    # --- parking: sleep, events, children -----------------------------------------------------

    async def sleep(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        seconds: float | None,
        until: datetime | None,
    ) -> bool:
        async with self._translate(run_id=run_id):
            parked: bool = await self._pool.fetchval(_SLEEP, queue, run_id, step, seconds, until)
        return parked

    async def await_event(
        self, queue: str, run_id: uuid.UUID, step: str, event: str, timeout: float | None
    ) -> tuple[str, Any]:
        async with self._translate(run_id=run_id):
            row = await self._pool.fetchrow(_AWAIT_EVENT, queue, run_id, step, event, timeout)
        assert row is not None
        return row["status"], row["payload"]

    async def await_task(
        self, queue: str, run_id: uuid.UUID, step: str, child: uuid.UUID, timeout: float | None
    ) -> tuple[str, Any]:
        async with self._translate(run_id=run_id, task_id=child):
            row = await self._pool.fetchrow(_AWAIT_TASK, queue, run_id, step, child, timeout)
        assert row is not None
        return row["status"], row["outcome"]

    async def emit_event(self, name: str, payload: Any) -> int:
        payload_json = encode_json(payload, f"the payload of event {name!r}")
        async with self._translate():
            woken: int = await self._pool.fetchval(_EMIT_EVENT, name, payload_json)
        return woken

    # --- fan-in: several tasks, batches, dependencies' results ---------------------------------

    async def await_tasks(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        children: Sequence[uuid.UUID],
        timeout: float | None,
    ) -> tuple[str, Any]:
        async with self._translate(run_id=run_id):
            row = await self._pool.fetchrow(
                _AWAIT_TASKS, queue, run_id, step, list(children), timeout
            )
        assert row is not None
        return row["status"], row["outcomes"]

    async def spawn_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        callbacks: Mapping[str, Any],
        options: Mapping[str, Any],
    ) -> BatchInfo:
        """``items`` are ``{queue, task_name, params, options}`` documents; ``callbacks`` maps
        ``on_complete`` and ``on_exhausted`` to one each (or leaves them out)."""
        items_json = encode_json(list(items), "the batch's items")
        callbacks_json = encode_json(dict(callbacks), "the batch's callbacks")
        options_json = encode_json(dict(options), "the batch's options")
        async with self._translate():
            rows = await self._pool.fetch(_SPAWN_BATCH, items_json, callbacks_json, options_json)
        return BatchInfo(
            batch_id=rows[0]["batch_id"],
            created=rows[0]["batch_created"],
            members=[_spawn_info(r) for r in rows],
        )

    async def get_batch(self, batch_id: uuid.UUID) -> BatchRecord:
        async with self._translate(batch_id=batch_id):
            doc = await self._pool.fetchval(_GET_BATCH, batch_id)
        callbacks = doc["callbacks"] or {}
        return BatchRecord(
            batch_id=uuid.UUID(doc["batch_id"]),
            total=doc["total"],
            pending=doc["pending"],
            counts=dict(doc["counts"]),
            on_complete=(callbacks.get("on_complete") or {}).get("task_name"),
            on_exhausted=(callbacks.get("on_exhausted") or {}).get("task_name"),
            callback_task_id=_uuid(doc["callback_task_id"]),
            callback_error=doc["callback_error"],
            idempotency_key=doc["idempotency_key"],
            created_at=datetime.fromisoformat(doc["created_at"]),
            finished_at=_ts(doc["finished_at"]),
        )

    async def get_dependency_results(
        self, queue: str | None, task_id: uuid.UUID
    ) -> list[DependencyResult]:
        async with self._translate(task_id=task_id):
            rows = await self._pool.fetch(_GET_DEPENDENCY_RESULTS, queue, task_id)
        return [
            DependencyResult(
                task_id=r["task_id"],
                task_name=r["task_name"],
                state=TaskState(r["state"]),
                result=r["result"],
            )
            for r in rows
        ]

    # --- messages, published state, patches ----------------------------------------------------

    async def send_message(self, task_id: uuid.UUID, topic: str, payload: Any) -> bool:
        payload_json = encode_json(payload, f"the message on topic {topic!r}")
        async with self._translate(task_id=task_id):
            woke: bool = await self._pool.fetchval(_SEND_MESSAGE, task_id, topic, payload_json)
        return woke

    async def receive_message(
        self, queue: str, run_id: uuid.UUID, step: str, topic: str, timeout: float | None
    ) -> tuple[str, Any]:
        async with self._translate(run_id=run_id):
            row = await self._pool.fetchrow(_RECEIVE_MESSAGE, queue, run_id, step, topic, timeout)
        assert row is not None
        return row["status"], row["payload"]

    async def set_state(self, queue: str, run_id: uuid.UUID, key: str, value: Any) -> None:
        value_json = encode_json(value, f"the value of state {key!r}")
        async with self._translate(run_id=run_id):
            await self._pool.execute(_SET_STATE, queue, run_id, key, value_json)

    async def get_state(
        self, queue: str | None, task_id: uuid.UUID, key: str | None
    ) -> dict[str, Any]:
        async with self._translate(task_id=task_id):
            rows = await self._pool.fetch(_GET_STATE, queue, task_id, key)
        return {r["key"]: r["value"] for r in rows}

    async def decide_patch(
        self, queue: str, run_id: uuid.UUID, step: str, passed: Sequence[str]
    ) -> bool:
        async with self._translate(run_id=run_id):
            new_path: bool = await self._pool.fetchval(
                _DECIDE_PATCH, queue, run_id, step, list(passed)
            )
        return new_path

    async def set_progress(self, queue: str, run_id: uuid.UUID, pct: float, detail: Any) -> None:
        detail_json = encode_json(detail, "the progress detail")
        async with self._translate(run_id=run_id):
            await self._pool.execute(_SET_PROGRESS, queue, run_id, pct, detail_json)

    async def cancel_by(
        self, queue: str | None, task_name: str | None, tags: Sequence[str] | None
    ) -> int:
        async with self._translate():
            count: int = await self._pool.fetchval(
                _CANCEL_BY, queue, task_name, list(tags) if tags else None
            )
        return count

    async def set_limit(
        self,
        queue: str,
        task_name: str,
        max_running: int | None,
        rate_allowed: int | None,
        rate_period: float | None,
        key_limit: int | None = None,
    ) -> None:
        async with self._translate():
            await self._pool.execute(
                _SET_LIMIT, queue, task_name, max_running, rate_allowed, rate_period, key_limit
            )

    # --- paused queues and cron schedules ---------------------------------------------------------

    async def pause_queue(self, queue: str) -> bool:
        async with self._translate():
            changed: bool = await self._pool.fetchval(_PAUSE_QUEUE, queue)
        return changed

    async def resume_queue(self, queue: str) -> bool:
        async with self._translate():
            changed: bool = await self._pool.fetchval(_RESUME_QUEUE, queue)
        return changed

    async def list_paused_queues(self) -> list[PausedQueue]:
        async with self._translate():
            rows = await self._pool.fetch(_LIST_PAUSED_QUEUES)
        return [PausedQueue(queue=r["queue"], paused_at=r["paused_at"]) for r in rows]

    async def set_cron_schedule(
        self,
        name: str,
        expr: str,
        timezone: str,
        queue: str,
        task_name: str,
        params: Any,
        options: Mapping[str, Any],
        missed: str,
        source: str,
    ) -> bool:
        params_json = encode_json(params, "params")
        options_json = encode_json(dict(options), "options")
        async with self._translate():
            created: bool = await self._pool.fetchval(
                _SET_CRON_SCHEDULE,
                name,
                expr,
                timezone,
                queue,
                task_name,
                params_json,
                options_json,
                missed,
                source,
            )
        return created

    async def remove_cron_schedule(self, name: str) -> bool:
        async with self._translate():
            found: bool = await self._pool.fetchval(_REMOVE_CRON_SCHEDULE, name)
        return found

    async def pause_cron_schedule(self, name: str) -> bool:
        async with self._translate():
            found: bool = await self._pool.fetchval(_PAUSE_CRON_SCHEDULE, name)
        return found

    async def resume_cron_schedule(self, name: str) -> bool:
        async with self._translate():
            found: bool = await self._pool.fetchval(_RESUME_CRON_SCHEDULE, name)
        return found

    async def list_cron_schedules(self, queues: Sequence[str] | None) -> CronSchedules:
        async with self._translate():
            doc = await self._pool.fetchval(
                _LIST_CRON_SCHEDULES, None if queues is None else list(queues)
            )
        return CronSchedules(
            now=_at(doc["now"]), schedules=[_cron_schedule(s) for s in doc["schedules"]]
        )

    async def fire_cron(self, name: str, slot: datetime) -> tuple[uuid.UUID, bool] | None:
        async with self._translate():
            row = await self._pool.fetchrow(_FIRE_CRON, name, slot)
        return None if row is None else (row["task_id"], row["created"])

    # --- workers --------------------------------------------------------------------------------

    async def register_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        queues: Sequence[str],
        ttl: float,
        concurrency: int | None = None,
    ) -> None:
        async with self._translate():
            await self._pool.execute(
                _REGISTER_WORKER, worker_id, host, pid, list(queues), ttl, concurrency
            )

    async def worker_heartbeat(self, worker_id: str, ttl: float) -> bool:
        async with self._translate():
            alive: bool = await self._pool.fetchval(_WORKER_HEARTBEAT, worker_id, ttl)
        return alive

    async def stop_worker(self, worker_id: str) -> None:
        async with self._translate():
            await self._pool.execute(_STOP_WORKER, worker_id)

    # --- operator views -------------------------------------------------------------------------

    async def queue_counts(self, tags: Sequence[str] | None = None) -> list[QueueCount]:
        async with self._translate():
            rows = await self._pool.fetch(_QUEUE_COUNTS, list(tags) if tags else None)
        return _queue_counts(rows)

    async def list_failed_runs(
        self, queue: str | None, limit: int, tags: Sequence[str] | None = None
    ) -> list[FailedRun]:
        async with self._translate():
            rows = await self._pool.fetch(
                _LIST_FAILED_RUNS, queue, limit, list(tags) if tags else None
            )
        return [
            FailedRun(
                task_id=r["task_id"],
                run_id=r["run_id"],
                queue=r["queue"],
                task_name=r["task_name"],
                task_state=TaskState(r["task_state"]),
                attempt=r["attempt"],
                max_attempts=r["max_attempts"],
                failure_reason=FailureReason(r["failure_reason"]),
                error=r["error"],
                finished_at=r["finished_at"],
            )
            for r in rows
        ]

    async def failed_work(
        self,
        queue: str | None,
        task_name: str | None,
        reason: str | None,
        since: datetime | None,
        limit: int | None,
        state: str | None,
        reason_class: str | None,
        error_type: str | None,
        tags: Sequence[str] | None,
    ) -> list[FailedWork]:
        async with self._translate():
            rows = await self._pool.fetch(
                _FAILED_WORK,
                queue,
                task_name,
                reason,
                since,
                limit,
                state,
                reason_class,
                error_type,
                list(tags) if tags else None,
            )
        return [_failed_work(r) for r in rows]

    async def failure_groups(
        self,
        queue: str | None,
        task_name: str | None,
        reason: str | None,
        since: datetime | None,
        state: str | None,
        reason_class: str | None,
        error_type: str | None,
        tags: Sequence[str] | None,
    ) -> list[FailureGroup]:
        async with self._translate():
            rows = await self._pool.fetch(
                _FAILURE_GROUPS,
                queue,
                task_name,
                reason,
                since,
                state,
                reason_class,
                error_type,
                list(tags) if tags else None,
            )
        return [
            FailureGroup(
                failure_reason=FailureReason(r["failure_reason"]),
                reason_class=ReasonClass(r["reason_class"]),
                error_type=r["error_type"],
                task_name=r["task_name"],
                queue=r["queue"],
                count=r["count"],
                first_seen=r["first_seen"],
                last_seen=r["last_seen"],
            )
            for r in rows
        ]

    async def finished_counts(self, window_s: float) -> list[QueueCount]:
        async with self._translate():
            rows = await self._pool.fetch(_FINISHED_COUNTS, window_s)
        return _queue_counts(rows)

    async def replay(
        self,
        queue: str | None,
        task_id: uuid.UUID,
        from_step: str | None,
        options: Mapping[str, Any],
    ) -> SpawnInfo:
        options_json = encode_json(dict(options), "options")
        async with self._translate(task_id=task_id):
            row = await self._pool.fetchrow(_REPLAY, queue, task_id, from_step, options_json)
        assert row is not None
        return _spawn_info(row)

    async def discard(self, queue: str | None, task_id: uuid.UUID) -> TaskState:
        async with self._translate(task_id=task_id):
            before: str = await self._pool.fetchval(_DISCARD, queue, task_id)
        return TaskState(before)

    async def prune_tasks(
        self,
        older_than: float,
        states: Sequence[str],
        limit: int,
        task_names: Sequence[str] | None = None,
        except_names: Sequence[str] | None = None,
    ) -> int:
        async with self._translate():
            deleted: int = await self._pool.fetchval(
                _PRUNE_TASKS,
                older_than,
                list(states),
                limit,
                None if task_names is None else list(task_names),
                None if except_names is None else list(except_names),
            )
        return deleted

    async def prune_bookkeeping(self, older_than: float, limit: int) -> int:
        async with self._translate():
            deleted: int = await self._pool.fetchval(_PRUNE_BOOKKEEPING, older_than, limit)
        return deleted

    async def move_to_history(self, limit: int, min_age: float) -> int:
        async with self._translate():
            moved: int = await self._pool.fetchval(_MOVE_TO_HISTORY, limit, min_age)
        return moved

    async def refresh_hot_stats(self) -> bool:
        async with self._translate():
            analyzed: bool = await self._pool.fetchval(_REFRESH_HOT_STATS)
        return analyzed

    async def ensure_history_partitions(self, days_ahead: int) -> int:
        async with self._translate():
            added: int = await self._pool.fetchval(_ENSURE_HISTORY_PARTITIONS, days_ahead)
        return added

    async def drop_history_partitions(self, older_than: float) -> int:
        async with self._translate():
            dropped: int = await self._pool.fetchval(_DROP_HISTORY_PARTITIONS, older_than)
        return dropped

    async def may_vacuum_hot_tables(self) -> bool:
        async with self._translate():
            may: bool | None = await self._pool.fetchval(_MAY_VACUUM_HOT_TABLES)
        return bool(may)

    async def vacuum_hot_tables(self) -> None:
        async with self._translate():
            await self._pool.execute(_VACUUM_HOT_TABLES)

    async def vacuum_history_tables(self) -> None:
        async with self._translate():
            await self._pool.execute(_VACUUM_HISTORY_TABLES)

    # --- the console ----------------------------------------------------------------------------

    async def list_tasks(
        self,
        queue: str | None,
        task_name: str | None,
        state: str | None,
        tags: Sequence[str] | None,
        since: datetime | None,
        until: datetime | None,
        task_id: uuid.UUID | None,
        idempotency_key: str | None,
        params: Any,
        before: uuid.UUID | None,
        limit: int,
    ) -> list[TaskSummary]:
        params_json = None if params is None else encode_json(params, "params")
        async with self._translate():
            rows = await self._pool.fetch(
                _LIST_TASKS,
                queue,
                task_name,
                state,
                list(tags) if tags else None,
                since,
                until,
                task_id,
                idempotency_key,
                params_json,
                before,
                limit,
            )
        return [
            TaskSummary(
                task_id=r["task_id"],
                queue=r["queue"],
                task_name=r["task_name"],
                state=TaskState(r["state"]),
                attempt=r["attempt"],
                max_attempts=r["max_attempts"],
                priority=r["priority"],
                created_at=r["created_at"],
                scheduled_at=r["scheduled_at"],
                finished_at=r["finished_at"],
                idempotency_key=r["idempotency_key"],
                tags=list(r["tags"] or ()),
                failure_reason=FailureReason(r["failure_reason"]) if r["failure_reason"] else None,
                error_type=r["error_type"],
                progress=r["progress"],
            )
            for r in rows
        ]

    async def queue_depth(self) -> list[QueueDepth]:
        async with self._translate():
            rows = await self._pool.fetch(_QUEUE_DEPTH)
        return [
            QueueDepth(
                queue=r["queue"],
                pending=r["pending"],
                running=r["running"],
                sleeping=r["sleeping"],
                available=r["available"],
                oldest_available_s=r["oldest_available_s"],
            )
            for r in rows
        ]

    async def list_workers(self, gone_within: float) -> list[WorkerInfo]:
        async with self._translate():
            rows = await self._pool.fetch(_LIST_WORKERS, gone_within)
        return [
            WorkerInfo(
                worker_id=r["worker_id"],
                host=r["host"],
                pid=r["pid"],
                queues=list(r["queues"] or ()),
                started_at=r["started_at"],
                last_seen_at=r["last_seen_at"],
                expires_at=r["expires_at"],
                stopped_at=r["stopped_at"],
                alive=r["alive"],
                concurrency=r["concurrency"],
                busy=r["busy"],
                claimed_ahead=r["claimed_ahead"],
                stats_at=r["stats_at"],
                running=r["running"],
            )
            for r in rows
        ]

    async def roll_up_flow(self, max_minutes: int) -> int:
        async with self._translate():
            rows: int = await self._pool.fetchval(_ROLL_UP_FLOW, max_minutes)
        return rows

    async def ended_counts(self, since: datetime) -> list[QueueCount]:
        async with self._translate():
            rows = await self._pool.fetch(_ENDED_COUNTS, since)
        return _queue_counts(rows)

    async def flow(self, since: datetime, step_s: int) -> list[FlowMinute]:
        async with self._translate():
            rows = await self._pool.fetch(_FLOW, since, step_s)
        return [
            FlowMinute(
                minute=r["minute"],
                queue=r["queue"],
                completed=r["completed"],
                failed=r["failed"],
                dead=r["dead"],
                cancelled=r["cancelled"],
                failed_classes={k: int(v) for k, v in r["failed_classes"].items()},
                lag_ms={int(k): int(v) for k, v in r["lag_ms"].items()},
                run_ms={int(k): int(v) for k, v in r["run_ms"].items()},
            )
            for r in rows
        ]

    async def terminate_other_sessions(self, wait_s: float = 10.0) -> int:
        """Terminate every other client session on this database and wait until they are gone
        (a failover, as far as the sessions can tell); return how many. For tests."""
        async with self._translate():
            conn = await asyncpg.connect(self.dsn, timeout=10.0)
            try:
                rows = await conn.fetch(_TERMINATE_OTHERS)
                pids = [r["pid"] for r in rows if r["terminated"]]
                with anyio.fail_after(wait_s):  # backends exit asynchronously
                    while await conn.fetchval(_SESSIONS_LEFT, pids):  # noqa: ASYNC110 — server state
                        await anyio.sleep(0.01)
            finally:
                await conn.close()
        return len(pids)

    # --- notifications --------------------------------------------------------------------------

    async def listen(self, handlers: Mapping[str, Callable[[str], None]]) -> Listener:
        """Open a dedicated LISTEN connection calling ``handlers[channel](payload)``."""
        try:
            conn = await asyncpg.connect(self.dsn, timeout=10.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(self.dsn, exc) from exc
        listener = Listener(conn)
        try:
            async with self._translate():
                for channel, handler in handlers.items():
                    await conn.add_listener(channel, listener.callback(handler))
        except asyncpg.ReadOnlySQLTransactionError as exc:  # a hot standby refuses LISTEN
            conn.terminate()
            host, port = describe_dsn(self.dsn)
            raise DatabaseUnavailable(
                f"{host}:{port} is a read replica, which refuses LISTEN — notifications (a"
                " worker's wake-up, result(), the console's live updates) need the primary",
                host=host,
                port=port,
            ) from exc
        except BaseException:
            conn.terminate()
            raise
        return listener


class Listener:
    """A connection held for LISTEN; ``closed`` tells when it was lost."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @staticmethod
    def callback(handler: Callable[[str], None]) -> Callable[..., None]:
        def _on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            handler(payload)

        return _on_notify

    @property
    def closed(self) -> bool:
        return self._conn.is_closed()

    async def close(self) -> None:
        if not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)


def _ts(value: str | None) -> datetime | None:
    return _at(value) if value else None


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def _named_id(message: str) -> uuid.UUID | None:
    """The id a "no task <id>" message names: the task that was not found, which is not always
    the one the call was about (an unknown task among the tasks a gather waits for)."""
    _, _, tail = message.rpartition(" ")
    try:
        return uuid.UUID(tail)
    except ValueError:
        return None


def _at(value: str) -> datetime:
    """A timestamptz from JSON; ``infinity`` (a run waiting for an event or its dependencies)
    is the latest datetime there is."""
    if value == "infinity":
        return datetime.max.replace(tzinfo=UTC)
    return datetime.fromisoformat(value)


def _progress(doc: dict[str, Any] | None) -> Progress | None:
    if not doc:
        return None
    run_id = doc.get("run_id")
    return Progress(
        pct=doc["pct"],
        detail=doc.get("detail"),
        at=_ts(doc.get("at")),
        run_id=uuid.UUID(run_id) if run_id else None,
    )


def _task_record(doc: dict[str, Any]) -> TaskRecord:
    runs = [
        RunRecord(
            run_id=uuid.UUID(r["run_id"]),
            attempt=r["attempt"],
            state=RunState(r["state"]),
            claimed_by=r["claimed_by"],
            available_at=_at(r["available_at"]),
            started_at=_ts(r["started_at"]),
            finished_at=_ts(r["finished_at"]),
            lease_expires_at=_ts(r["lease_expires_at"]),
            failure_reason=FailureReason(r["failure_reason"]) if r["failure_reason"] else None,
            error=r["error"],
            result=doc["result"] if r["state"] == RunState.COMPLETED else None,
            code_version=r.get("code_version"),
            reserved=bool(r.get("reserved")),
        )
        for r in doc["runs"]
    ]
    return TaskRecord(
        task_id=uuid.UUID(doc["task_id"]),
        queue=doc["queue"],
        task_name=doc["task_name"],
        params=doc["params"],
        headers=doc["headers"],
        state=TaskState(doc["state"]),
        attempt=doc["attempt"],
        max_attempts=doc["max_attempts"],
        idempotency_key=doc["idempotency_key"],
        created_at=datetime.fromisoformat(doc["created_at"]),
        result=doc["result"],
        failure=Failure.from_json(doc["failure"]),
        runs=runs,
        tags=list(doc.get("tags") or ()),
        progress=_progress(doc.get("progress")),
        partition_key=doc.get("partition_key"),
        concurrency_key=doc.get("concurrency_key"),
        parent_task_id=uuid.UUID(doc["parent_task_id"]) if doc.get("parent_task_id") else None,
        depends_on=[uuid.UUID(d) for d in doc.get("depends_on") or ()],
        pending_dependencies=[uuid.UUID(d) for d in doc.get("pending_dependencies") or ()],
        waiting_for=list(doc.get("waiting_for") or ()),
        scheduled_at=_ts(doc.get("scheduled_at")),
        discarded_at=_ts(doc.get("discarded_at")),
        on_parent_cancel=doc.get("on_parent_cancel") or "cancel",
        batch_ids=[uuid.UUID(b) for b in doc.get("batch_ids") or ()],
    )


def _cron_schedule(doc: dict[str, Any]) -> CronSchedule:
    return CronSchedule(
        name=doc["name"],
        expr=doc["expr"],
        timezone=doc["timezone"],
        queue=doc["queue"],
        task_name=doc["task_name"],
        params=doc["params"],
        options=doc["options"],
        missed=Missed(doc["missed"]),
        source=ScheduleSource(doc["source"]),
        paused_at=_ts(doc["paused_at"]),
        fired_through=_at(doc["fired_through"]),
        last_slot=_ts(doc["last_slot"]),
        last_task_id=uuid.UUID(doc["last_task_id"]) if doc["last_task_id"] else None,
        created_at=_at(doc["created_at"]),
        updated_at=_at(doc["updated_at"]),
    )


def _spawn_info(r: asyncpg.Record) -> SpawnInfo:
    return SpawnInfo(r["task_id"], r["run_id"], r["attempt"], r["created"])


def _queue_counts(rows: list[asyncpg.Record]) -> list[QueueCount]:
    return [
        QueueCount(queue=r["queue"], state=TaskState(r["state"]), count=r["count"]) for r in rows
    ]


def _retryable(state: FailedWorkState, reason: FailureReason, error: Any) -> bool:
    """What the runtime did and would do with a failure: retry it (it is being retried, or it
    was retried until its attempts ran out), or not (cancelled, or recorded not to be retried:
    ``error["retryable"]`` false)."""
    if state is FailedWorkState.RETRYING:
        return True
    if reason is FailureReason.CANCELLED:
        return False
    return not (isinstance(error, dict) and error.get("retryable") is False)


def _failed_work(r: asyncpg.Record) -> FailedWork:
    state = FailedWorkState(r["state"])
    reason_class = ReasonClass(r["reason_class"])
    if state is FailedWorkState.RETRYING:
        recovery = Recovery.NONE
    elif r["last_checkpoint"] is not None:
        recovery = Recovery.RETRY_FROM_CHECKPOINT
    else:
        recovery = Recovery.RETRY
    return FailedWork(
        task_id=r["task_id"],
        run_id=r["run_id"],
        queue=r["queue"],
        task_name=r["task_name"],
        state=state,
        attempt=r["attempt"],
        max_attempts=r["max_attempts"],
        failure_reason=FailureReason(r["failure_reason"]),
        reason_class=reason_class,
        error=r["error"],
        failed_at=r["failed_at"],
        retryable=_retryable(state, FailureReason(r["failure_reason"]), r["error"]),
        recovery=recovery,
        last_checkpoint=r["last_checkpoint"],
        tags=list(r["tags"] or ()),
    )


# --- spawning on a caller's connection ----------------------------------------------------------
# The caller's connection is not the pool's: durable's jsonb codec is not set on it (and the
# caller may have set another, as SQLAlchemy's asyncpg dialect does), so JSON travels as text and
# is cast in SQL; the results are uuids, integers and booleans, which need no codec.
_SPAWN_ON = (
    "select task_id, run_id, attempt, created"
    " from durable.spawn($1, $2, $3::text::jsonb, $4::text::jsonb)"
)
_SPAWN_MANY_ON = (
    "select task_id, run_id, attempt, created from durable.spawn_many($1, $2::text::jsonb)"
)
# 3F000: no schema durable; 42883: no such function (a protocol older than this package's)
_SQLSTATES_NO_PROTOCOL = {"3F000", "42883"}

#: An asyncpg connection that a caller owns (a pool's proxy of one included).
DriverConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


async def spawn_on(
    conn: DriverConnection,
    queue: str,
    task_name: str,
    params: Any,
    options: Mapping[str, Any],
) -> SpawnInfo:
    """``durable.spawn`` on the caller's connection, in whatever transaction it has open: the
    task exists when the caller commits, and its NOTIFY is delivered then."""
    params_json = encode_json(params, "params").decode()
    options_json = encode_json(dict(options), "options").decode()
    async with _on_callers_connection():
        row = await conn.fetchrow(_SPAWN_ON, queue, task_name, params_json, options_json)
    assert row is not None
    return _spawn_info(row)


async def spawn_many_on(
    conn: DriverConnection, queue: str, items: Sequence[tuple[str, Any, Mapping[str, Any]]]
) -> list[SpawnInfo]:
    """``durable.spawn_many`` on the caller's connection (see :func:`spawn_on`)."""
    docs = [{"task_name": name, "params": p, "options": dict(o)} for name, p, o in items]
    payload = encode_json(docs, "params").decode()
    async with _on_callers_connection():
        rows = await conn.fetch(_SPAWN_MANY_ON, queue, payload)
    return [_spawn_info(r) for r in rows]


@contextlib.asynccontextmanager
async def _on_callers_connection() -> AsyncIterator[None]:
    """Driver errors on a caller's connection, as durable's: a database without durable's
    protocol is a :class:`SchemaError`."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if exc.sqlstate in _SQLSTATES_NO_PROTOCOL:
            raise SchemaError(
                f"the database of this connection has no durable protocol to spawn with"
                f" ({getattr(exc, 'message', exc)}) — run `durable migrate` on it, or open a"
                " Durable app on it once (it migrates)"
            ) from exc
        raise _map_postgres_error(exc, functools.partial(_callers_connection_failed, exc)) from exc
    except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError, TimeoutError) as exc:
        # InternalClientError: the connection's protocol state broke when its server went away
        # mid-operation (seen after pg_terminate_backend), as in Store's own mapping
        raise _callers_connection_failed(exc) from exc


def _callers_connection_failed(exc: BaseException) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"the caller's connection failed — {type(exc).__name__}: {exc}")
