-- Cron schedules: those an app declares in code (app.cron, written here by its workers when
-- they start) and those added at run time (app.add_cron, durable cron add), in one table that
-- every worker reads. fired_through is the instant up to which the schedule's slots are dealt
-- with (fired, skipped by its missed policy, or passed while it was paused): a slot is fired
-- once, by whichever worker gets the row lock first.
create table durable.cron_schedules (
    name          text primary key check (length(name) between 1 and 200),
    expr          text not null check (length(expr) between 1 and 200),
    timezone      text not null,
    queue         text not null check (queue ~ '^[a-z][a-z0-9_]{0,47}$'),
    task_name     text not null,
    params        jsonb,
    options       jsonb not null default '{}',
    missed        text not null check (missed in ('skip', 'latest', 'all')),
    source        text not null check (source in ('code', 'api')),
    paused_at     timestamptz,
    fired_through timestamptz not null,
    last_slot     timestamptz,
    last_task_id  uuid,
    created_at    timestamptz not null,
    updated_at    timestamptz not null
);

create index cron_schedules_queue on durable.cron_schedules (queue);
