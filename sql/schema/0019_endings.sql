-- How a task's unsuccessful end reaches the tasks around it: its children are cancelled with it
-- (unless spawned to be abandoned), and a retry revives the dependents its end cancelled.

-- What happens to a child task (parent_task_id set) when its parent is cancelled: 'cancel' (it
-- is cancelled in the same transaction, and its own children in turn) or 'abandon' (it runs on).
alter table durable.tasks
    add column on_parent_cancel text not null default 'cancel'
        constraint tasks_on_parent_cancel_check check (on_parent_cancel in ('cancel', 'abandon'));

-- The dependents of a task, found when a retry revives those its failure cancelled (their
-- dependency edges are gone by then). Partial: most tasks depend on nothing.
create index tasks_depends_on on durable.tasks using gin (depends_on)
    where depends_on is not null;

-- retry() takes p_revive_dependents (default true, so that an older client's call resolves to
-- it); a fresh database has no functions yet when this runs.
drop function if exists durable.retry(text, uuid, jsonb);
