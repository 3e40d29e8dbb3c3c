-- The protocol this database runs: the version and the sha256 of the files of sql/protocol/ that
-- were last applied, in one row. The migrator re-applies the protocol when a package's files hash
-- differently, unless the recorded version is newer than the package's (no downgrade).
--
-- Version 14 is also the mark of the layout in two kinds of file: a durable from before it knows
-- schema versions up to 13 only, and so refuses a database that records 14.
create table durable.applied_protocol (
    one_row    boolean primary key default true check (one_row),
    version    integer not null check (version >= 1),
    checksum   text not null,
    applied_at timestamptz not null default now()
);
