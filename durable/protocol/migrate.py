"""Bring a database's schema and protocol up to date, in one transaction under an advisory lock.

The SQL comes in two kinds of file (``docs/architecture.md``, "The protocol in SQL"):

* ``sql/schema/NNNN_name.sql``: forward-only migrations (tables, indexes, constraints, data moves,
  and the ``drop function`` a changed signature needs; never a function body). Each is applied
  once and recorded in ``durable.schema_migrations`` with its sha256. The first is the baseline,
  ``0013_baseline.sql``: a fresh database gets it, and a database that an earlier durable migrated
  to version 13 has what it holds already, so migrating starts after it. A database that records
  only versions below the baseline is refused: an earlier durable must bring it to 13 first.
* ``sql/protocol/*.sql``: the current text of every function, grant and role, applied in name
  order. What was applied last is recorded in ``durable.applied_protocol``: its version
  (:data:`PROTOCOL_VERSION`) and the sha256 of the files.

:func:`migrate` applies the pending schema migrations, then the protocol when its hash differs
from the recorded one (or a schema migration ran, since one may drop a function the protocol
defines), then records both, all in one transaction: a database is never left between the two.

Versions, and why an older package never downgrades a newer database:

* A schema newer than this package (a recorded migration it does not know) is refused: the old
  package's SQL could not be trusted against tables it does not know. The two-file layout starts
  at schema version 14, so a durable from before it (which knows versions up to 13) refuses a
  database managed by this one.
* A protocol newer than this package's (a recorded version above :data:`PROTOCOL_VERSION`) is
  kept, neither overwritten nor refused: a newer protocol keeps serving older callers (a function
  whose signature changes gets a new name, ``claim_v2``, while workers of the old package still
  run), so an old worker restarted during a rolling deploy starts, and does not downgrade the
  functions under the new ones. Raise :data:`PROTOCOL_VERSION` whenever ``sql/protocol/``
  changes (``tests/unit/test_sql_files.py`` pins the files' hash to it).
* A protocol of this version whose hash differs (a checkout whose ``sql/protocol/`` was edited)
  is applied again.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from durable.protocol.errors import SchemaError
from durable.protocol.log import get_logger

log = get_logger()

#: The version of ``sql/protocol/``: raised whenever a file there changes.
PROTOCOL_VERSION = 11

_LOCK_KEY = 0x6475726162  # "durab": one key for every durable migrator
_SCHEMA_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PROTOCOL_FILE_RE = re.compile(r"^\d{2}_[a-z0-9_]+\.sql$")

_BOOKKEEPING = """
create schema if not exists durable;
create table if not exists durable.schema_migrations (
    version    integer primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
);
"""
_APPLIED = "select version, name, checksum from durable.schema_migrations order by version"
_RECORD = "insert into durable.schema_migrations (version, name, checksum) values ($1, $2, $3)"
_SCHEMA_EXISTS = "select to_regclass('durable.schema_migrations') is not null"
_PROTOCOL_EXISTS = "select to_regclass('durable.applied_protocol') is not null"
_APPLIED_PROTOCOL = "select version, checksum from durable.applied_protocol"
_RECORD_PROTOCOL = """
insert into durable.applied_protocol (version, checksum) values ($1, $2)
on conflict (one_row) do update set version = excluded.version, checksum = excluded.checksum,
                                    applied_at = excluded.applied_at
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One file of ``sql/schema/``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def path(self) -> str:
        return f"sql/schema/{self.version:04}_{self.name}.sql"


@dataclass(frozen=True, slots=True)
class Protocol:
    """The files of ``sql/protocol/`` as (name, text), in the order they are applied."""

    files: tuple[tuple[str, str], ...]

    @property
    def checksum(self) -> str:
        digest = hashlib.sha256()
        for name, sql in self.files:
            digest.update(f"{name}\0{sql}\0".encode())
        return digest.hexdigest()


def sql_dir() -> Path:
    """``durable/_sql`` in a wheel (pyproject force-includes ``sql/`` there), else ``sql/`` of
    the source checkout."""
    packaged = Path(str(importlib.resources.files("durable"))) / "_sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The schema migrations, oldest (the baseline) first, numbered without gaps."""
    paths = sorted((directory or sql_dir() / "schema").iterdir())
    found = [
        Migration(int(match[1]), match[2], path.read_text())
        for path in paths
        if (match := _SCHEMA_FILE_RE.match(path.name))
    ]
    versions = [m.version for m in found]
    if not found or versions != list(range(versions[0], versions[0] + len(found))):
        raise SchemaError(f"schema migrations must be numbered without gaps, found {versions}")
    return found


def load_protocol(directory: Path | None = None) -> Protocol:
    """The protocol's files, in name order."""
    directory = directory or sql_dir() / "protocol"
    paths = sorted(directory.iterdir())
    files = tuple((p.name, p.read_text()) for p in paths if _PROTOCOL_FILE_RE.match(p.name))
    if not files:
        raise SchemaError(f"no protocol files (NN_name.sql) in {directory}")
    return Protocol(files)


async def migrate(conn: asyncpg.Connection | PoolConnectionProxy) -> list[int]:
    """Apply the pending schema migrations and, when it changed, the protocol; return the schema
    versions applied. Safe to run concurrently."""
    migrations = load_migrations()
    protocol = load_protocol()
    await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute(_BOOKKEEPING)
            pending = _pending(await _read_migrations(conn), migrations)
            for migration in pending:
                await _execute(conn, migration.sql, migration.path)
                await conn.execute(_RECORD, migration.version, migration.name, migration.checksum)
            recorded = await _read_protocol(conn)
            apply = _protocol_is_due(recorded, protocol, schema_changed=bool(pending))
            if apply:
                for name, sql in protocol.files:
                    await _execute(conn, sql, f"sql/protocol/{name}")
                await conn.execute(_RECORD_PROTOCOL, PROTOCOL_VERSION, protocol.checksum)
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)
    for migration in pending:
        log.info("schema.migrated", version=migration.version, migration=migration.name)
    if apply:
        log.info("protocol.applied", version=PROTOCOL_VERSION, checksum=protocol.checksum[:12])
    elif recorded is not None and recorded[0] > PROTOCOL_VERSION:
        log.info("protocol.kept_newer", version=recorded[0], package_version=PROTOCOL_VERSION)
    return [m.version for m in pending]


async def check_schema(conn: asyncpg.Connection | PoolConnectionProxy) -> None:
    """Raise :class:`SchemaError` unless the schema has every migration this package knows and the
    protocol is this package's (or newer)."""
    migrations = load_migrations()
    applied: dict[int, tuple[str, str]] = {}
    if await conn.fetchval(_SCHEMA_EXISTS):
        applied = await _read_migrations(conn)
    if pending := _pending(applied, migrations):
        raise SchemaError(
            f"the database schema is old (missing migrations {[m.version for m in pending]})"
            " — run `durable migrate`"
        )
    protocol = load_protocol()
    recorded = await _read_protocol(conn)
    if _protocol_is_due(recorded, protocol, schema_changed=False):
        found = "none" if recorded is None else f"version {recorded[0]}"
        raise SchemaError(
            f"the database's protocol ({found}) is not this durable's (version"
            f" {PROTOCOL_VERSION}, sha256 {protocol.checksum[:12]}) — run `durable migrate`"
        )


async def _read_migrations(
    conn: asyncpg.Connection | PoolConnectionProxy,
) -> dict[int, tuple[str, str]]:
    """The recorded schema migrations: version -> (name, checksum)."""
    return {r["version"]: (r["name"], r["checksum"]) for r in await conn.fetch(_APPLIED)}


async def _read_protocol(conn: asyncpg.Connection | PoolConnectionProxy) -> tuple[int, str] | None:
    """The recorded protocol: (version, checksum), or None."""
    if not await conn.fetchval(_PROTOCOL_EXISTS):
        return None
    row = await conn.fetchrow(_APPLIED_PROTOCOL)
    return None if row is None else (row["version"], row["checksum"])


def _pending(
    applied: Mapping[int, tuple[str, str]], migrations: list[Migration]
) -> list[Migration]:
    """The migrations to apply, after refusing a schema this package cannot serve."""
    baseline, latest = migrations[0].version, migrations[-1].version
    newer = sorted(v for v in applied if v > latest)
    if newer:
        raise SchemaError(
            f"the database schema has migrations {newer} that this durable does not know — "
            "upgrade durable"
        )
    if applied and max(applied) < baseline:
        raise SchemaError(
            f"the database schema is at version {max(applied)}, below {baseline}, the oldest"
            f" this durable upgrades from — bring it to version {baseline} with an earlier durable"
            " (its `durable migrate`) first, then migrate with this one"
        )
    # the baseline's version may have been recorded by an earlier durable for another file:
    # only a record of this package's own file is compared
    changed = [
        m.version
        for m in migrations
        if (recorded := applied.get(m.version)) is not None
        and recorded[0] == m.name
        and recorded[1] != m.checksum
    ]
    if changed:
        log.warning("schema.checksum_mismatch", versions=changed)
    return [m for m in migrations if m.version not in applied]


def _protocol_is_due(
    recorded: tuple[int, str] | None, protocol: Protocol, *, schema_changed: bool
) -> bool:
    if recorded is None:
        return True
    version, checksum = recorded
    if version > PROTOCOL_VERSION:
        return False  # newer: kept (see the module's docstring)
    return schema_changed or version < PROTOCOL_VERSION or checksum != protocol.checksum


async def _execute(conn: asyncpg.Connection | PoolConnectionProxy, sql: str, path: str) -> None:
    try:
        await conn.execute(sql)
    except asyncpg.PostgresError as exc:
        exc.add_note(f"while applying {path}")
        raise
