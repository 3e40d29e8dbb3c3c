-- Paused queues: a queue with a row here accepts spawns but hands out no run (durable.claim
-- returns nothing for it). Stored, so a pause outlives every worker and restart; resuming
-- deletes the row.
create table durable.paused_queues (
    queue     text primary key check (queue ~ '^[a-z][a-z0-9_]{0,47}$'),
    paused_at timestamptz not null
);
