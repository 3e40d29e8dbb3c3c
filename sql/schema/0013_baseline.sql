-- The baseline: the tables, indexes and constraints of schema version 13, as one file.
--
-- A database created by an earlier durable and migrated to version 13 (sql/migrations/0001..0013
-- of that package) has exactly these, column order and names included; this package records
-- version 13 for it and upgrades it from there. A fresh database gets this file instead of the 13
-- old ones. The protocol (the functions, grants and roles) is not here: it lives in sql/protocol/
-- and is applied after the schema. sql/protocol/00_model.sql describes what the tables mean.

create schema if not exists durable;

-- A unit of work. state is 'pending' while the task is live (its live run's state refines it)
-- and then its end state.
create table durable.tasks (
    task_id             uuid primary key,
    queue               text not null,
    task_name           text not null,
    params              jsonb not null,
    headers             jsonb not null default '{}',
    state               text not null default 'pending'
                        constraint tasks_state_check
                        check (state in ('pending', 'completed', 'failed', 'cancelled')),
    attempt             integer not null default 1,
    max_attempts        integer not null default 3
                        constraint tasks_max_attempts_check check (max_attempts >= 1),
    retry               jsonb,
    timeout_s           double precision,
    heartbeat_timeout_s double precision,
    priority            integer not null default 0,
    idempotency_key     text,
    created_at          timestamptz not null,
    finished_at         timestamptz,
    result              jsonb,
    failure             jsonb,           -- the last failure: reason, run_id, attempt, error
    tags                text[] not null default '{}',
    progress            jsonb,
    partition_key       text,
    parent_task_id      uuid,
    depends_on          uuid[],
    unique_key          text,            -- durable.unique_key(): task name and the unique params
    cancellation        jsonb,           -- the cancellation policy: max_delay, max_duration
    scheduled_at        timestamptz,     -- when the task should first start
    cancel_at           timestamptz,     -- the earliest moment its cancellation policy may end it
    discard_hook        boolean not null default false,
    discarded_at        timestamptz
);
create unique index tasks_idempotency_key on durable.tasks (queue, idempotency_key)
    where idempotency_key is not null;
create index tasks_pending on durable.tasks (queue) where state = 'pending';
create index tasks_finished on durable.tasks (finished_at) where finished_at is not null;
create index tasks_unique on durable.tasks (queue, unique_key, created_at desc)
    where unique_key is not null;
create index tasks_cancel_at on durable.tasks (cancel_at)
    where cancel_at is not null and state = 'pending';
create index tasks_parent on durable.tasks (parent_task_id) where parent_task_id is not null;
create index tasks_failed_work on durable.tasks (queue, task_name)
    where failure is not null and state <> 'completed' and discarded_at is null;

-- One attempt at a task. No foreign key to tasks: only the protocol writes runs, always with the
-- id of an existing task, and a per-row check would cost a lookup and a lock on the hottest paths.
create table durable.runs (
    run_id           uuid primary key,
    task_id          uuid not null,
    queue            text not null,
    attempt          integer not null,
    priority         integer not null default 0,
    state            text not null
                     constraint runs_state_check
                     check (state in ('pending', 'running', 'sleeping', 'completed', 'failed',
                                      'cancelled', 'released', 'suspended')),
    available_at     timestamptz not null,
    claimed_by       text,
    lease_s          double precision,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    failure_reason   text
                     constraint runs_failure_reason_check
                     check (failure_reason in ('errored', 'job_timeout', 'heartbeat_timeout',
                                               'crash', 'cancelled')),
    error            jsonb,
    created_at       timestamptz not null,
    partition_key    text
);
-- what claim() reads: the claimable runs of a queue in claim order (sleeping runs whose time has
-- come are claimed like pending ones)
create index runs_claim on durable.runs (queue, priority desc, available_at, run_id)
    where state in ('pending', 'sleeping');
create index runs_claim_partition on durable.runs (queue, partition_key, priority desc,
                                                   available_at, run_id)
    where state in ('pending', 'sleeping') and partition_key is not null;
create index runs_lease on durable.runs (queue, lease_expires_at) where state = 'running';
create index runs_task on durable.runs (task_id);
-- a task has at most one live run
create unique index runs_one_live on durable.runs (task_id)
    where state in ('pending', 'running', 'sleeping');
create index runs_failed on durable.runs (finished_at desc) where state = 'failed';

-- A step's recorded result, written once by the holder of a lease on the task's run.
create table durable.checkpoints (
    task_id    uuid not null,
    step_name  text not null,
    value      jsonb,
    run_id     uuid not null,
    created_at timestamptz not null,
    primary key (task_id, step_name)
);

-- A worker's liveness, renewed by its heartbeat; the reaper reads it to tell a crash from a
-- stalled run.
create table durable.workers (
    worker_id    text primary key,
    host         text,
    pid          integer,
    queues       text[] not null default '{}',
    started_at   timestamptz not null,
    last_seen_at timestamptz not null,
    expires_at   timestamptz not null,
    stopped_at   timestamptz
);

-- The last payload emitted under each event name, so that a wait that starts later receives it.
create table durable.events (
    name       text primary key,
    payload    jsonb,
    emitted_at timestamptz not null
);

-- A parked run waiting for an event or for a child task; run_id is the sleeping run to wake.
create table durable.waits (
    task_id       uuid not null,
    step_name     text not null,
    run_id        uuid not null,
    event_name    text,
    child_task_id uuid,
    timeout_at    timestamptz,
    created_at    timestamptz not null,
    primary key (task_id, step_name),
    constraint waits_check check ((event_name is null) <> (child_task_id is null))
);
create index waits_event on durable.waits (event_name) where event_name is not null;
create index waits_child on durable.waits (child_task_id) where child_task_id is not null;

-- The dependencies of a waiting task that have not completed yet.
create table durable.task_dependencies (
    task_id    uuid not null,
    depends_on uuid not null,
    primary key (task_id, depends_on)
);
create index task_dependencies_on on durable.task_dependencies (depends_on);

-- When each partition of a queue last got a run ('' is the unpartitioned runs): claims serve the
-- partition served longest ago first, so single-run claims take turns too.
create table durable.partition_turns (
    queue         text not null,
    partition_key text not null,
    served_at     timestamptz not null,
    primary key (queue, partition_key)
);

-- The cluster-wide limits of a task name on a queue: how many may run at once, and how many may
-- start per period (recent_starts holds the starts of the current window).
create table durable.limits (
    queue         text not null,
    task_name     text not null,
    max_running   integer constraint limits_max_running_check check (max_running >= 1),
    rate_allowed  integer constraint limits_rate_allowed_check check (rate_allowed >= 1),
    rate_period_s double precision
                  constraint limits_rate_period_s_check check (rate_period_s > 0),
    recent_starts timestamptz[] not null default '{}',
    primary key (queue, task_name),
    constraint limits_check check ((rate_allowed is null) = (rate_period_s is null))
);
