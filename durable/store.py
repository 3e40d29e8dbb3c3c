"""The one owner of database access: an asyncpg pool, one method per SQL function, rows -> records.

Nothing else in durable holds SQL (migrations aside). Every query text is a constant, so
asyncpg's statement cache hits; user values travel only as parameters. Driver errors become
durable's own errors here, ``from exc``.
"""

from __future__ import annotations

import contextlib
import math
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg
import orjson

from durable import migrate as _migrate
from durable.errors import (
    DatabaseUnavailable,
    InvalidArgument,
    InvalidQueueName,
    InvalidState,
    LeaseLost,
    NotSerializable,
    TaskNotFound,
)
from durable.records import (
    Checkpoint,
    Claim,
    FailedRun,
    Failure,
    FailureReason,
    QueueCount,
    RunRecord,
    RunState,
    SpawnInfo,
    TaskRecord,
    TaskResult,
    TaskState,
)

CHANNEL_WORK: Final = "durable_work"
CHANNEL_DONE: Final = "durable_done"


class RawJson(bytes):
    """JSON text already encoded by :func:`encode_json`; the jsonb codec passes it through."""


def encode_json(value: Any, what: str) -> RawJson:
    """Encode ``value`` as JSON or raise :class:`NotSerializable` naming ``what``."""
    if isinstance(value, RawJson):
        return value
    try:
        encoded = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise NotSerializable(what, str(exc)) from exc
    # orjson writes NaN and infinities as null; JSON has no such numbers, so refuse them
    if b"null" in encoded and _has_non_finite(value):
        raise NotSerializable(what, "NaN and infinity are not JSON numbers")
    return RawJson(encoded)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + (value if isinstance(value, RawJson) else orjson.dumps(value))


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without a round trip: the store never leaves session state behind
    (no LISTEN, advisory lock, cursor or SET on pool connections; migrate unlocks its lock)."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )


# --- queries: one per SQL function --------------------------------------------------------------
_SPAWN = "select * from durable.spawn($1, $2, $3, $4)"
_SPAWN_MANY = "select * from durable.spawn_many($1, $2)"
_CLAIM = "select * from durable.claim($1, $2, $3, $4)"
_COMPLETE = "select durable.complete($1, $2, $3)"
_FAIL = "select durable.fail($1, $2, $3, $4, $5)"
_EXTEND_CLAIM = "select durable.extend_claim($1, $2, $3)"
_EXTEND_CLAIMS = "select lost_run_id from durable.extend_claims($1, $2, $3)"
_SET_CHECKPOINT = "select durable.set_checkpoint($1, $2, $3, $4, $5)"
_GET_CHECKPOINTS = "select * from durable.get_checkpoints($1, $2)"
_SCHEDULE_RUN = "select durable.schedule_run($1, $2, $3)"
_CANCEL = "select durable.cancel($1, $2)"
_RETRY = "select * from durable.retry($1, $2, $3)"
_GET_TASK = "select durable.get_task($1, $2)"
_GET_RESULT = "select * from durable.get_result($1, $2)"
_REGISTER_WORKER = "select durable.register_worker($1, $2, $3, $4, $5)"
_WORKER_HEARTBEAT = "select durable.worker_heartbeat($1, $2)"
_STOP_WORKER = "select durable.stop_worker($1)"
_QUEUE_COUNTS = "select * from durable.queue_counts()"
_LIST_FAILED_RUNS = "select * from durable.list_failed_runs($1, $2)"

_SQLSTATE_LEASE_LOST = "DU001"
_SQLSTATE_NOT_FOUND = "DU002"
_SQLSTATE_INVALID_STATE = "DU003"
_SQLSTATE_QUEUE = "DU004"
_SQLSTATE_ARGUMENT = "DU005"
# 22003 numeric out of range, 22007/22008 a bad or overflowing timestamp, 22P02 not a number
_SQLSTATES_ARGUMENT = {"22003", "22007", "22008", "22P02"}
# 22P05: \u0000 in jsonb; 22021: a NUL byte in text; 54000: a value over PostgreSQL's size limits
_SQLSTATES_NOT_SERIALIZABLE = {"22P05", "22021", "54000"}
_SQLSTATES_UNAVAILABLE_PREFIXES = ("08", "57P")  # connection exceptions, operator intervention


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


class Store:
    """An asyncpg pool and the protocol's SQL functions as typed methods."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        statement_cache_size: int = 100,
        server_settings: Mapping[str, str] | None = None,
        migrate: bool = True,
    ) -> Store:
        """Connect; apply migrations (or, with ``migrate=False``, refuse an old schema)."""
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
                if migrate:
                    await _migrate.migrate(conn)
                else:
                    await _migrate.check_schema(conn)
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _translate(
        self, *, run_id: uuid.UUID | None = None, task_id: uuid.UUID | None = None
    ) -> AsyncIterator[None]:
        try:
            yield
        except asyncpg.PostgresError as exc:
            raise self._map_postgres_error(exc, run_id=run_id, task_id=task_id) from exc
        except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise _unavailable(self.dsn, exc) from exc

    def _map_postgres_error(
        self, exc: asyncpg.PostgresError, *, run_id: uuid.UUID | None, task_id: uuid.UUID | None
    ) -> Exception:
        state = exc.sqlstate or ""
        message = getattr(exc, "message", str(exc))
        detail = getattr(exc, "detail", None) or ""
        if state == _SQLSTATE_LEASE_LOST:
            return LeaseLost(run_id, detail)
        if state == _SQLSTATE_NOT_FOUND:
            return TaskNotFound(task_id)
        if state == _SQLSTATE_INVALID_STATE:
            return InvalidState(message, state=detail or None)
        if state == _SQLSTATE_QUEUE:
            return InvalidQueueName(message.removeprefix("invalid queue name: "))
        if state == _SQLSTATE_ARGUMENT or state in _SQLSTATES_ARGUMENT:
            return InvalidArgument(message)
        if state in _SQLSTATES_NOT_SERIALIZABLE:
            return NotSerializable("a value", message)
        if state.startswith(_SQLSTATES_UNAVAILABLE_PREFIXES):
            return _unavailable(self.dsn, exc)
        return exc

    # --- the protocol ---------------------------------------------------------------------------

    async def spawn(
        self, queue: str, task_name: str, params: Any, options: Mapping[str, Any]
    ) -> SpawnInfo:
        params_json = encode_json(params, "params")
        options_json = encode_json(dict(options), "options")
        async with self._translate():
            row = await self._pool.fetchrow(_SPAWN, queue, task_name, params_json, options_json)
        assert row is not None
        return SpawnInfo(row["task_id"], row["run_id"], row["attempt"], row["created"])

    async def spawn_many(
        self, queue: str, items: Sequence[tuple[str, Any, Mapping[str, Any]]]
    ) -> list[SpawnInfo]:
        docs = [{"task_name": name, "params": p, "options": dict(o)} for name, p, o in items]
        payload = encode_json(docs, "params")
        async with self._translate():
            rows = await self._pool.fetch(_SPAWN_MANY, queue, payload)
        return [SpawnInfo(r["task_id"], r["run_id"], r["attempt"], r["created"]) for r in rows]

    async def claim(
        self, queue: str, worker_id: str, claim_timeout: float, qty: int
    ) -> list[Claim]:
        async with self._translate():
            rows = await self._pool.fetch(_CLAIM, queue, worker_id, claim_timeout, qty)
        return [
            Claim(
                run_id=r["run_id"],
                task_id=r["task_id"],
                queue=queue,
                task_name=r["task_name"],
                params=r["params"],
                headers=r["headers"],
                attempt=r["attempt"],
                max_attempts=r["max_attempts"],
                timeout=r["timeout_s"],
                heartbeat_timeout=r["heartbeat_timeout_s"],
                lease_expires_at=r["lease_expires_at"],
                has_checkpoints=r["has_checkpoints"],
            )
            for r in rows
        ]

    async def complete(self, queue: str, run_id: uuid.UUID, result: Any) -> None:
        result_json = encode_json(result, "result")
        async with self._translate(run_id=run_id):
            await self._pool.execute(_COMPLETE, queue, run_id, result_json)

    async def fail(
        self,
        queue: str,
        run_id: uuid.UUID,
        error: Mapping[str, Any] | None,
        reason: FailureReason,
        retry_at: datetime | None,
    ) -> uuid.UUID | None:
        error_json = encode_json(dict(error) if error is not None else None, "error")
        async with self._translate(run_id=run_id):
            next_run: uuid.UUID | None = await self._pool.fetchval(
                _FAIL, queue, run_id, error_json, str(reason), retry_at
            )
        return next_run

    async def extend_claim(
        self, queue: str, run_id: uuid.UUID, extend_by: float | None
    ) -> datetime:
        async with self._translate(run_id=run_id):
            lease: datetime = await self._pool.fetchval(_EXTEND_CLAIM, queue, run_id, extend_by)
        return lease

    async def extend_claims(
        self, worker_id: str, run_ids: Sequence[uuid.UUID], worker_ttl: float
    ) -> list[uuid.UUID]:
        async with self._translate():
            rows = await self._pool.fetch(_EXTEND_CLAIMS, worker_id, list(run_ids), worker_ttl)
        return [r["lost_run_id"] for r in rows]

    async def set_checkpoint(
        self, queue: str, run_id: uuid.UUID, step: str, value: Any, extend_by: float | None
    ) -> None:
        value_json = encode_json(value, f"the value of step {step!r}")
        async with self._translate(run_id=run_id):
            await self._pool.execute(_SET_CHECKPOINT, queue, run_id, step, value_json, extend_by)

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
        self, queue: str | None, task_id: uuid.UUID, options: Mapping[str, Any]
    ) -> SpawnInfo:
        options_json = encode_json(dict(options), "options")
        async with self._translate(task_id=task_id):
            row = await self._pool.fetchrow(_RETRY, queue, task_id, options_json)
        assert row is not None
        return SpawnInfo(row["task_id"], row["run_id"], row["attempt"], row["created"])

    async def get_task(self, queue: str | None, task_id: uuid.UUID) -> TaskRecord:
        async with self._translate(task_id=task_id):
            doc = await self._pool.fetchval(_GET_TASK, queue, task_id)
        return _task_record(doc)

    async def get_result(self, queue: str | None, task_id: uuid.UUID) -> TaskResult:
        async with self._translate(task_id=task_id):
            row = await self._pool.fetchrow(_GET_RESULT, queue, task_id)
        assert row is not None
        return TaskResult(
            state=TaskState(row["state"]),
            result=row["result"],
            failure=Failure.from_json(row["failure"]),
        )

    # --- workers --------------------------------------------------------------------------------

    async def register_worker(
        self, worker_id: str, host: str, pid: int, queues: Sequence[str], ttl: float
    ) -> None:
        async with self._translate():
            await self._pool.execute(_REGISTER_WORKER, worker_id, host, pid, list(queues), ttl)

    async def worker_heartbeat(self, worker_id: str, ttl: float) -> bool:
        async with self._translate():
            alive: bool = await self._pool.fetchval(_WORKER_HEARTBEAT, worker_id, ttl)
        return alive

    async def stop_worker(self, worker_id: str) -> None:
        async with self._translate():
            await self._pool.execute(_STOP_WORKER, worker_id)

    # --- operator views -------------------------------------------------------------------------

    async def queue_counts(self) -> list[QueueCount]:
        async with self._translate():
            rows = await self._pool.fetch(_QUEUE_COUNTS)
        return [
            QueueCount(queue=r["queue"], state=TaskState(r["state"]), count=r["count"])
            for r in rows
        ]

    async def list_failed_runs(self, queue: str | None, limit: int) -> list[FailedRun]:
        async with self._translate():
            rows = await self._pool.fetch(_LIST_FAILED_RUNS, queue, limit)
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

    # --- notifications --------------------------------------------------------------------------

    async def listen(self, handlers: Mapping[str, Callable[[str], None]]) -> Listener:
        """Open a dedicated LISTEN connection calling ``handlers[channel](payload)``."""
        try:
            conn = await asyncpg.connect(self.dsn, timeout=10.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unavailable(self.dsn, exc) from exc
        listener = Listener(conn)
        async with self._translate():
            for channel, handler in handlers.items():
                await conn.add_listener(channel, listener.callback(handler))
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
    return datetime.fromisoformat(value) if value else None


def _task_record(doc: dict[str, Any]) -> TaskRecord:
    runs = [
        RunRecord(
            run_id=uuid.UUID(r["run_id"]),
            attempt=r["attempt"],
            state=RunState(r["state"]),
            claimed_by=r["claimed_by"],
            available_at=datetime.fromisoformat(r["available_at"]),
            started_at=_ts(r["started_at"]),
            finished_at=_ts(r["finished_at"]),
            lease_expires_at=_ts(r["lease_expires_at"]),
            failure_reason=FailureReason(r["failure_reason"]) if r["failure_reason"] else None,
            error=r["error"],
            result=doc["result"] if r["state"] == RunState.COMPLETED else None,
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
    )
