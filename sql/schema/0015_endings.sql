-- How a task's unsuccessful end reaches the tasks around it: its children are cancelled with it
-- (unless spawned to be abandoned).

-- What happens to a child task (parent_task_id set) when its parent is cancelled: 'cancel' (it
-- is cancelled in the same transaction, and its own children in turn) or 'abandon' (it runs on).
alter table durable.tasks
    add column on_parent_cancel text not null default 'cancel'
        constraint tasks_on_parent_cancel_check check (on_parent_cancel in ('cancel', 'abandon'));

