"""Apply ``sql/migrations/NNNN_name.sql`` in order, under an advisory lock.

Migrations are forward-only. Each one runs in its own transaction and is recorded in
``durable.schema_migrations``. A database whose schema is newer than this package is refused.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from durable.protocol.errors import SchemaError
from durable.protocol.log import get_logger

log = get_logger()

_LOCK_KEY = 0x6475726162  # "durab": one key for every durable migrator
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOKKEEPING = """
create schema if not exists durable;
create table if not exists durable.schema_migrations (
    version    integer primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
);
"""
_APPLIED = "select version, checksum from durable.schema_migrations order by version"
_RECORD = "insert into durable.schema_migrations (version, name, checksum) values ($1, $2, $3)"
_SCHEMA_EXISTS = "select to_regclass('durable.schema_migrations') is not null"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """``durable/_sql/migrations`` in a wheel, ``sql/migrations`` in a source checkout."""
    packaged = Path(str(importlib.resources.files("durable"))) / "_sql" / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql" / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    paths = sorted((directory or migrations_dir()).iterdir())
    found = [
        Migration(int(match[1]), match[2], path.read_text())
        for path in paths
        if (match := _FILE_RE.match(path.name))
    ]
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


async def migrate(conn: asyncpg.Connection | PoolConnectionProxy) -> list[int]:
    """Apply every pending migration; return the versions applied. Safe to run concurrently."""
    migrations = load_migrations()
    await conn.execute("select pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_BOOKKEEPING)
        applied = {r["version"]: r["checksum"] for r in await conn.fetch(_APPLIED)}
        _check_known(applied, migrations)
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(_RECORD, migration.version, migration.name, migration.checksum)
            log.info("schema.migrated", version=migration.version, migration=migration.name)
            done.append(migration.version)
        return done
    finally:
        await conn.execute("select pg_advisory_unlock($1)", _LOCK_KEY)


async def check_schema(conn: asyncpg.Connection | PoolConnectionProxy) -> None:
    """Raise :class:`SchemaError` unless every migration this package knows is applied."""
    migrations = load_migrations()
    applied: dict[int, str] = {}
    if await conn.fetchval(_SCHEMA_EXISTS):
        applied = {r["version"]: r["checksum"] for r in await conn.fetch(_APPLIED)}
    _check_known(applied, migrations)
    missing = [m.version for m in migrations if m.version not in applied]
    if missing:
        raise SchemaError(
            f"the database schema is old (missing migrations {missing}) — run `durable migrate`"
        )


def _check_known(applied: dict[int, str], migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    newer = sorted(v for v in applied if v not in known)
    if newer:
        raise SchemaError(
            f"the database schema has migrations {newer} that this durable does not know — "
            "upgrade durable"
        )
    changed = [v for v, checksum in applied.items() if known[v].checksum != checksum]
    if changed:
        log.warning("schema.checksum_mismatch", versions=changed)
