-- Hot and cold (issue 21): live work stays in tasks, runs and checkpoints (the hot tables); a
-- task that ended moves there, with its runs and checkpoints, to the history tables, so the hot
-- tables hold the live work only and stay small enough for a vacuum to be cheap and frequent.
-- The move is durable.move_to_history() (sql/protocol/01_history.sql), called by the workers'
-- maintenance in batches; the views durable.all_tasks, all_runs and all_checkpoints read both.
--
-- Each history table is partitioned by range of task_id: task ids are UUIDv7, so a range of ids
-- is a range of creation times, one partition per day (made ahead by the maintenance:
-- durable.ensure_history_partitions) and a DEFAULT partition for ids outside the days made. By
-- task id, a lookup by id prunes to one partition (by finish time it would probe each one).
--
-- The columns are the hot table's, in the same order (LIKE), so that the move is
-- `insert into x_history select * from deleted x` and the views are a plain union all: a
-- migration that adds a column to tasks, runs or checkpoints adds it to the history table too
-- (tests/integration/test_history.py checks that the lists stay identical).

create table durable.tasks_history (like durable.tasks including defaults including constraints)
    partition by range (task_id);
alter table durable.tasks_history add primary key (task_id);
create table durable.tasks_history_default partition of durable.tasks_history default;
-- what the reads of finished tasks use: the console's browser, failed work, throughput,
-- retention, unique specs, a parent's children and a task's dependents
create index tasks_history_queue on durable.tasks_history (queue, task_id);
create index tasks_history_name on durable.tasks_history (task_name, task_id);
create index tasks_history_state on durable.tasks_history (state, task_id);
create index tasks_history_tags on durable.tasks_history using gin (tags);
create index tasks_history_key on durable.tasks_history (idempotency_key)
    where idempotency_key is not null;
create index tasks_history_finished on durable.tasks_history (finished_at);
create index tasks_history_unique on durable.tasks_history (queue, unique_key, created_at desc)
    where unique_key is not null;
create index tasks_history_parent on durable.tasks_history (parent_task_id)
    where parent_task_id is not null;
create index tasks_history_depends_on on durable.tasks_history using gin (depends_on)
    where depends_on is not null;
create index tasks_history_failed_work on durable.tasks_history (queue, task_name)
    where failure is not null and state <> 'completed' and discarded_at is null;
create index tasks_history_failed_at on durable.tasks_history (failed_at desc, task_id)
    where failure is not null and state <> 'completed' and discarded_at is null;

create table durable.runs_history (like durable.runs including defaults including constraints)
    partition by range (task_id);
alter table durable.runs_history add primary key (task_id, run_id);
create table durable.runs_history_default partition of durable.runs_history default;
-- the failed runs newest first, and the runs that ended since the flow's rollup last ran
create index runs_history_failed on durable.runs_history (finished_at desc)
    where state = 'failed';
create index runs_history_finished on durable.runs_history (finished_at);

create table durable.checkpoints_history (
    like durable.checkpoints including defaults including constraints
) partition by range (task_id);
alter table durable.checkpoints_history add primary key (task_id, step_name);
create table durable.checkpoints_history_default partition of durable.checkpoints_history default;

-- Idempotency keys over hot and history: a unique index cannot span two tables, so each key a
-- spawn took is here, with its task, until retention deletes the task.
create table durable.task_keys (
    queue           text not null,
    idempotency_key text not null,
    task_id         uuid not null,
    primary key (queue, idempotency_key)
);
create index task_keys_task on durable.task_keys (task_id);
insert into durable.task_keys (queue, idempotency_key, task_id)
select t.queue, t.idempotency_key, t.task_id from durable.tasks t
 where t.idempotency_key is not null;

-- The hot tables churn (every run is inserted, updated and, once moved, deleted): autovacuum
-- visits them after a few thousand dead or inserted rows, whatever they hold, instead of after
-- 20% of the table.
alter table durable.tasks set (autovacuum_vacuum_scale_factor = 0,
                               autovacuum_vacuum_threshold = 5000,
                               autovacuum_vacuum_insert_scale_factor = 0,
                               autovacuum_vacuum_insert_threshold = 5000,
                               autovacuum_analyze_scale_factor = 0,
                               autovacuum_analyze_threshold = 5000);
alter table durable.runs set (autovacuum_vacuum_scale_factor = 0,
                              autovacuum_vacuum_threshold = 5000,
                              autovacuum_vacuum_insert_scale_factor = 0,
                              autovacuum_vacuum_insert_threshold = 5000,
                              autovacuum_analyze_scale_factor = 0,
                              autovacuum_analyze_threshold = 5000);
alter table durable.checkpoints set (autovacuum_vacuum_scale_factor = 0,
                                     autovacuum_vacuum_threshold = 5000,
                                     autovacuum_vacuum_insert_scale_factor = 0,
                                     autovacuum_vacuum_insert_threshold = 5000,
                                     autovacuum_analyze_scale_factor = 0,
                                     autovacuum_analyze_threshold = 5000);

-- The finished tasks already in the hot tables move to history by the workers' maintenance in
-- batches (or at once: `durable migrate --move-history`), not in this transaction.

-- cancelled_by reads a row of either table now (durable.all_tasks): the protocol recreates it.
drop function if exists durable.cancelled_by(durable.tasks, uuid);
