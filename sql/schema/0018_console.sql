-- The operator's console: the task browser's indexes, the flow over time (a per-minute rollup
-- kept by the workers) and what a worker says of its slots. sql/protocol/65_console.sql holds
-- the functions that use them.

-- The task browser lists tasks newest first by task_id (UUIDv7: time-ordered), a page at a time
-- (keyset: the next page starts below the last id seen). One index per filter it narrows by, so
-- that a page costs a few index probes whatever the table holds: a queue, a task name, an end
-- state (a live state is read from the runs: runs_live_state), the tags (GIN), an idempotency
-- key without its queue.
create index tasks_browse_queue on durable.tasks (queue, task_id);
create index tasks_browse_name on durable.tasks (task_name, task_id);
create index tasks_browse_state on durable.tasks (state, task_id) where state <> 'pending';
create index tasks_browse_tags on durable.tasks using gin (tags);
create index tasks_browse_key on durable.tasks (idempotency_key)
    where idempotency_key is not null;
-- (its queue and available_at ride along: queue_depth counts the live runs from the index alone)
create index runs_live_state on durable.runs (state, task_id) include (queue, available_at)
    where state in ('pending', 'running', 'sleeping');
-- the rollup reads the runs that ended since it last ran, and the console the last few seconds
create index runs_finished on durable.runs (finished_at) where finished_at is not null;

-- When a task's latest failure happened, beside tasks.failure (which the failing statements set
-- together), so that the failed work is read newest first from an index, a page at a time. The
-- failures recorded before get their failed run's end, as the failed work read it until now.
alter table durable.tasks add column failed_at timestamptz;
update durable.tasks t
   set failed_at = coalesce((select r.finished_at from durable.runs r
                              where r.run_id = (t.failure->>'run_id')::uuid),
                            t.finished_at, t.created_at)
 where t.failure is not null;
create index tasks_failed_at on durable.tasks (failed_at desc, task_id)
    where failure is not null and state <> 'completed' and discarded_at is null;

-- Flow over time: per minute and queue, the runs that ended in that minute (completed, failed —
-- of which dead: they ended their task failed — and cancelled), the failed ones per reason class
-- and two histograms: start lag (from when a run could start to its start) and run time (start
-- to end, of completed and failed runs), each {bucket: count} with bucket b holding
-- [2^(b/2), 2^((b+1)/2)) milliseconds (durable.flow_bucket). Rows are sums, so a minute rolled
-- up in two parts adds up. durable.roll_up_flow() adds the runs that ended since rolled_up_to;
-- reading a window costs its minutes, never the history.
create table durable.flow_minutes (
    minute         timestamptz not null,
    queue          text not null,
    completed      integer not null default 0,
    failed         integer not null default 0,
    dead           integer not null default 0,
    cancelled      integer not null default 0,
    failed_classes jsonb not null default '{}',
    lag_ms         jsonb not null default '{}',
    run_ms         jsonb not null default '{}',
    primary key (minute, queue)
);
create table durable.flow_rollup (
    one_row      boolean primary key default true check (one_row),
    rolled_up_to timestamptz not null
);
-- the charts show a day at most: a new database starts its rollup a day back
insert into durable.flow_rollup (rolled_up_to) values (now() - interval '1 day');

-- What a worker says of itself for the workers page: its slots (concurrency), how many handlers
-- run (busy) and how many runs it claimed ahead of a free slot, as of stats_at (each lease
-- renewal).
alter table durable.workers
    add column concurrency   integer,
    add column busy          integer,
    add column claimed_ahead integer,
    add column stats_at      timestamptz;

-- register_worker gains p_concurrency, extend_claims p_busy and p_ahead (each with a default, so
-- an older caller's call still resolves); the old signatures go.
drop function if exists durable.register_worker(text, text, integer, text[], double precision);
drop function if exists durable.extend_claims(text, uuid[], double precision);
