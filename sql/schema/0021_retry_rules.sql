-- Which failures a task retries, by reason class (protocol/failures.py): retry_on, when set, the
-- only classes retried; discard_on, classes that end the task at once. Null: every failure is
-- retried while attempts are left. durable.fail_locked_run applies them, for every failure
-- (a crash and a reaped heartbeat timeout included).
alter table durable.tasks
    add column retry_on text[],
    add column discard_on text[];
