-- Long-running workflows: the code version each run ran, waits for several tasks (ctx.gather)
-- and for messages (ctx.recv), batches with a completion callback, messages to one task and the
-- state a task publishes.

-- The code version of the worker that claimed the run (Durable(version=...), or derived from
-- the handlers' source). claim() gains a parameter for it, with a default so that a caller of the
-- old signature still resolves: the old signature goes.
alter table durable.runs add column code_version text;
drop function if exists durable.claim(text, text, double precision, integer);

-- A wait is for an event, one task, a message on a topic, or several tasks (child_task_ids, in
-- the order the outcome lists them); exactly one of the four.
alter table durable.waits add column topic text, add column child_task_ids uuid[];
alter table durable.waits drop constraint waits_check;
alter table durable.waits add constraint waits_check
    check (num_nonnulls(event_name, child_task_id, topic, child_task_ids) = 1);
create index waits_topic on durable.waits (task_id, topic) where topic is not null;

-- The tasks a wait for several tasks still waits for: an edge goes when its task ends, and the
-- wait is over when its last edge went.
create table durable.wait_children (
    task_id       uuid not null,
    step_name     text not null,
    child_task_id uuid not null,
    primary key (task_id, step_name, child_task_id)
);
create index wait_children_child on durable.wait_children (child_task_id);

-- Messages sent to one task and not received yet, in the order they were sent (seq) per topic.
-- A receive takes the oldest and deletes it: its payload lives on as the receiving step's
-- checkpoint.
create table durable.messages (
    seq     bigint generated always as identity primary key,
    task_id uuid not null,
    topic   text not null,
    payload jsonb not null,
    sent_at timestamptz not null
);
create index messages_topic on durable.messages (task_id, topic, seq);

-- What a task publishes of where it stands (ctx.set_state): the last value per key.
create table durable.states (
    task_id    uuid not null,
    key        text not null,
    value      jsonb not null,
    run_id     uuid not null,
    updated_at timestamptz not null,
    primary key (task_id, key)
);

-- A batch of tasks with a callback spawned once when every member ended. callbacks holds the
-- spawn of on_complete and on_exhausted ({queue, task_name, params, options}, or null).
create table durable.batches (
    batch_id         uuid primary key,
    idempotency_key  text,
    callbacks        jsonb not null,
    total            integer not null,
    counts           jsonb,            -- members per end state, once every member ended
    callback_task_id uuid,
    callback_error   jsonb,            -- why the callback could not be spawned, if it could not
    created_at       timestamptz not null,
    finished_at      timestamptz
);
create unique index batches_idempotency_key on durable.batches (idempotency_key)
    where idempotency_key is not null;
create index batches_finished on durable.batches (finished_at) where finished_at is not null;

-- The members of a batch, in the order they were given; ended_state is set at a member's first
-- end (a later retry of the member does not count again). A task may be a member of several
-- batches, or twice of one (two items that found the same task by its idempotency key).
create table durable.batch_members (
    batch_id    uuid not null,
    position    integer not null,
    task_id     uuid not null,
    ended_state text,
    primary key (batch_id, position)
);
-- what the end of a task looks up: the batches still waiting for it
create index batch_members_open on durable.batch_members (task_id) where ended_state is null;
create index batch_members_task on durable.batch_members (task_id);
