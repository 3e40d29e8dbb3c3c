-- complete_runs: complete many runs in one statement and one commit (a worker batches the
-- completions of its runs). Each run is fenced as in complete(): it completes only if it is still
-- running under an unexpired lease; the others are reported, not raised, so one lost lease does not
-- fail the batch. Locks follow the global order: the tasks (sorted), then their runs (sorted).

create function durable.complete_runs(p_queue text, p_run_ids uuid[], p_results jsonb[])
returns table (run_id uuid, completed boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now   timestamptz := durable.now();
    v_done  uuid[];
    v_tasks uuid[];
begin
    if coalesce(array_length(p_run_ids, 1), 0) <> coalesce(array_length(p_results, 1), 0) then
        raise exception 'run_ids and results must have the same length' using errcode = 'DU005';
    end if;
    perform 1 from durable.tasks t
     where t.task_id in (select r.task_id from durable.runs r where r.run_id = any(p_run_ids))
     order by t.task_id
       for no key update;
    with live as (
        select r.run_id from durable.runs r
         where r.run_id = any(p_run_ids) and r.state = 'running' and r.lease_expires_at > v_now
           and (p_queue is null or r.queue = p_queue)
         order by r.run_id
           for update
    ), done_runs as (
        update durable.runs r set state = 'completed', finished_at = v_now
          from live where r.run_id = live.run_id
        returning r.run_id, r.task_id
    ), done_tasks as (
        update durable.tasks t
           set state = 'completed', result = coalesce(u.result, 'null'), finished_at = v_now
          from done_runs d join unnest(p_run_ids, p_results) as u(run_id, result)
               on u.run_id = d.run_id
         where t.task_id = d.task_id
        returning t.task_id
    )
    select array_agg(d.run_id), (select array_agg(task_id) from done_tasks)
      into v_done, v_tasks
      from done_runs d;
    perform pg_notify('durable_done', x::text) from unnest(v_tasks) as x;
    return query
        select u.id, u.id = any(coalesce(v_done, '{}')) from unnest(p_run_ids) as u(id);
end $$;

revoke execute on function durable.complete_runs(text, uuid[], jsonb[]) from public;
select durable.grant_worker_privileges();
