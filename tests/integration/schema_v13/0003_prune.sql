-- Retention: delete finished tasks (with their runs and checkpoints, by cascade) older than an
-- age, in bounded batches so no statement holds long locks. Live work (pending, running,
-- sleeping) is never deleted by age. Returns how many tasks were deleted; call until 0.

create index tasks_finished on durable.tasks (finished_at) where finished_at is not null;

create function durable.prune_tasks(p_older_than double precision, p_states text[],
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
    )
    delete from durable.tasks t using doomed where t.task_id = doomed.task_id;
    get diagnostics v_count = row_count;
    return v_count;
end $$;

-- an operator's function: not for PUBLIC, and not for durable_worker (see 0002)
revoke execute on function durable.prune_tasks(double precision, text[], integer) from public;
