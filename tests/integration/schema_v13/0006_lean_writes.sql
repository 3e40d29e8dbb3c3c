-- Lean writes: runs and checkpoints no longer carry foreign keys to tasks. Every row of theirs is
-- written by the protocol functions, which take the task id from an existing task or run, so the
-- per-row referential check (a lookup and a key-share lock on the task, per run spawned and per
-- checkpoint written) bought nothing but cost on the hottest paths. The one thing the cascade did,
-- prune_tasks now does itself: it deletes a pruned task's runs and checkpoints in the same
-- statement.

alter table durable.runs drop constraint runs_task_id_fkey;
alter table durable.checkpoints drop constraint checkpoints_task_id_fkey;

create or replace function durable.prune_tasks(p_older_than double precision, p_states text[],
                                               p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
    v_cutoff timestamptz;
    v_count  integer;
begin
    if p_older_than is null or p_older_than < 0 then
        raise exception 'older_than must be a non-negative number of seconds' using errcode = 'DU005';
    end if;
    if p_states is null or not p_states <@ array['completed', 'failed', 'cancelled'] then
        raise exception 'only finished states can be pruned: completed, failed, cancelled'
            using errcode = 'DU005';
    end if;
    v_cutoff := durable.now() - make_interval(secs => p_older_than);
    with doomed as (
        select t.task_id from durable.tasks t
         where t.finished_at is not null and t.finished_at < v_cutoff
           and t.state = any(p_states)
         order by t.finished_at
         limit greatest(p_limit, 0)
           for update skip locked
    ), gone as (
        delete from durable.tasks t using doomed where t.task_id = doomed.task_id
        returning t.task_id
    ), gone_runs as (
        delete from durable.runs r using gone where r.task_id = gone.task_id
    ), gone_checkpoints as (
        delete from durable.checkpoints k using gone where k.task_id = gone.task_id
    )
    select count(*) into v_count from gone;
    return v_count;
end $$;
