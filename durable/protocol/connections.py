"""A caller's connection: what ``spawn(..., connection=conn)`` accepts, resolved to asyncpg's.

A spawn given the application's own connection runs durable's SQL on it, inside the
application's transaction (see ``store.spawn_on``): the task exists only if the application
commits, and workers are woken at the commit (NOTIFY is transactional). Accepted: an asyncpg
``Connection`` (or a pool's proxy of one), and SQLAlchemy's ``AsyncConnection`` or
``AsyncSession`` on the asyncpg driver (``postgresql+asyncpg://``; the extra
``durable[sqlalchemy]``). SQLAlchemy is imported only when such a connection is given, so the
core never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from durable.protocol.errors import InvalidArgument
from durable.protocol.store import DriverConnection

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["SpawnConnection", "driver_connection"]

#: What ``connection=`` takes: the caller's asyncpg connection, or SQLAlchemy's async
#: connection or session on asyncpg.
SpawnConnection: TypeAlias = (
    "asyncpg.Connection[Any] | PoolConnectionProxy[Any] | AsyncConnection | AsyncSession"
)


async def driver_connection(connection: SpawnConnection) -> DriverConnection:
    """The asyncpg connection under ``connection``, inside the transaction the caller opened.

    SQLAlchemy begins its transaction on the driver lazily, at a connection's first statement:
    when it has run none yet, one ``select 1`` through SQLAlchemy begins it (as a statement of
    its own would; with ``isolation_level="AUTOCOMMIT"`` there is none), so the spawn joins the
    transaction that the session's or connection's commit or rollback ends."""
    if isinstance(connection, asyncpg.Connection | PoolConnectionProxy):
        return connection
    if type(connection).__module__.startswith("sqlalchemy."):
        return await _sqlalchemy_driver_connection(connection)
    raise InvalidArgument(
        f"connection= takes an asyncpg Connection, or a SQLAlchemy AsyncConnection or"
        f" AsyncSession on asyncpg — got {type(connection).__name__}"
    )


async def _sqlalchemy_driver_connection(connection: Any) -> DriverConnection:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession  # optional: imported when used

    if isinstance(connection, AsyncSession):
        connection = await connection.connection()  # begins the session's transaction
    if not isinstance(connection, AsyncConnection):
        raise InvalidArgument(
            "connection= takes a SQLAlchemy AsyncConnection or AsyncSession (or an asyncpg"
            f" Connection) — got {type(connection).__name__}"
        )
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, asyncpg.Connection):
        raise InvalidArgument(
            "connection= needs SQLAlchemy on the asyncpg driver (postgresql+asyncpg://) — this"
            f" one uses {connection.dialect.driver!r}"
        )
    if not driver.is_in_transaction():  # SQLAlchemy's autobegin, as its own statements get
        await connection.exec_driver_sql("select 1")
    return driver
