"""The two kinds of SQL file keep to their kind (docs/architecture.md, "The protocol in SQL")."""

import re

from durable.protocol.migrate import PROTOCOL_VERSION, load_migrations, load_protocol, sql_dir

#: The protocol's version and the sha256 of its files at that version. A change to sql/protocol/
#: is a new protocol: raise PROTOCOL_VERSION and pin the new hash here.
PINNED = (11, "0e56cfbdb8b9c2d2f4b2e0c1ab6bcb6d5fff699385081d1142deabd41d64e46d")

_DEFINITION = re.compile(r"^create\s+(or\s+replace\s+)?function\s+durable\.(\w+)\(", re.I | re.M)


def test_each_protocol_function_is_written_once_as_create_or_replace() -> None:
    found: dict[str, list[str]] = {}
    for name, sql in load_protocol().files:
        for match in _DEFINITION.finditer(sql):
            assert match[1], f"{name}: `create function durable.{match[2]}` — use create or replace"
            found.setdefault(match[2], []).append(name)
    twice = {function: files for function, files in found.items() if len(files) > 1}
    assert twice == {}
    assert {"spawn", "claim", "complete_runs", "grant_worker_privileges"} <= found.keys()


def test_schema_migrations_hold_no_function_body() -> None:
    for migration in load_migrations():
        assert not _DEFINITION.search(migration.sql), migration.path
        assert "$$" not in migration.sql, migration.path


def test_the_sql_is_wrapped_at_100_columns() -> None:
    long = [
        f"{path.parent.name}/{path.name}:{number}"
        for path in sorted(sql_dir().glob("*/*.sql"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if len(line) > 100
    ]
    assert long == []


def test_a_changed_protocol_has_a_new_version() -> None:
    assert (PROTOCOL_VERSION, load_protocol().checksum) == PINNED, (
        "sql/protocol/ changed: raise PROTOCOL_VERSION (durable/protocol/migrate.py) and pin the"
        " new hash in PINNED here (two packages whose files differ under one version would each"
        " apply their own over the other's; a newer version is never downgraded)"
    )
