-- Claims that charge attempts fairly and limits that hold: a run is reserved until its worker
-- reports that its handler started; a run carries its task's name and concurrency key, so that
-- a claim finds the runs of each task name (and key) by index and skips the capped ones without
-- reading them; limits per concurrency key.

-- A run is reserved from its claim until its worker reports that its handler started (on its
-- next claim or heartbeat, or with a checkpoint or progress write). A reserved run whose worker
-- dies goes back to its queue without spending an attempt; it ends 'released' with its
-- failure_reason ('crash' or 'heartbeat_timeout') and reserved still true.
alter table durable.runs add column reserved boolean not null default false;

-- The task's name and concurrency key, copied onto each of its runs (as partition_key is).
alter table durable.runs add column task_name text;
alter table durable.runs add column concurrency_key text;
alter table durable.tasks add column concurrency_key text;
update durable.runs r set task_name = t.task_name from durable.tasks t
 where t.task_id = r.task_id;

-- The claimable runs of a queue by task name and concurrency key: a claim on a queue with
-- limits visits each (name, key) group once (a loose index scan), takes the head of the groups
-- that may start, and never reads the runs of a capped group.
create index runs_claim_group on durable.runs (queue, task_name, (coalesce(concurrency_key, '')),
                                               priority desc, available_at, run_id)
    where state in ('pending', 'sleeping');
-- The running runs of a task name (and key), counted against its limits across every queue.
create index runs_running_group on durable.runs (task_name, (coalesce(concurrency_key, '')))
    where state = 'running';

-- At most key_limit runs of the task name at once per concurrency key, across every queue.
alter table durable.limits add column key_limit integer
    constraint limits_key_limit_check check (key_limit >= 1);

-- New arguments, each with a default so that an older caller's call resolves to the new
-- function: claim() takes the runs whose handlers started and the task names to skip;
-- extend_claims() the runs whose handlers started; set_limit() a limit per concurrency key.
-- (A fresh database has no functions yet when this runs.)
drop function if exists durable.claim(text, text, double precision, integer, text);
drop function if exists durable.extend_claims(text, uuid[], double precision, integer, integer);
drop function if exists durable.set_limit(text, text, integer, integer, double precision);
-- pick_runs() takes the task names a claim skips
drop function if exists durable.pick_runs(text, integer, timestamp with time zone);
