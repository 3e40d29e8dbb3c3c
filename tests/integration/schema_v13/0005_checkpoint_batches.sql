-- set_checkpoints: record many steps' results in one statement and one commit (a worker batches
-- the checkpoints its runs write while another write is in flight: group commit). Each item is
-- fenced as in set_checkpoint(): written only if its run is still running under an unexpired
-- lease, whose lease it then extends; the others are reported, not raised, so one lost lease does
-- not fail the batch. A step already recorded keeps its first value (the write is idempotent).
-- Runs are locked in run_id order, as complete_runs and extend_claims lock them.

create function durable.set_checkpoints(p_queue text, p_run_ids uuid[], p_steps text[],
                                        p_values jsonb[])
returns table (run_id uuid, written boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now  timestamptz := durable.now();
    v_live uuid[];
begin
    if coalesce(array_length(p_run_ids, 1), 0) <> coalesce(array_length(p_steps, 1), 0)
       or coalesce(array_length(p_run_ids, 1), 0) <> coalesce(array_length(p_values, 1), 0) then
        raise exception 'run_ids, steps and values must have the same length' using errcode = 'DU005';
    end if;
    if exists (select 1 from unnest(p_steps) as s(step) where s.step is null or s.step = '') then
        raise exception 'step name must not be empty' using errcode = 'DU005';
    end if;
    with live as (
        select r.run_id from durable.runs r
         where r.run_id = any(p_run_ids) and r.state = 'running' and r.lease_expires_at > v_now
           and (p_queue is null or r.queue = p_queue)
         order by r.run_id
           for update
    ), extended as (
        update durable.runs r
           set lease_expires_at = greatest(r.lease_expires_at,
                                           v_now + make_interval(secs => r.lease_s))
          from live where r.run_id = live.run_id
        returning r.run_id, r.task_id
    ), written as (
        insert into durable.checkpoints (task_id, step_name, value, run_id, created_at)
        select e.task_id, u.step, coalesce(u.value, 'null'), e.run_id, v_now
          from unnest(p_run_ids, p_steps, p_values) as u(run_id, step, value)
          join extended e on e.run_id = u.run_id
        on conflict (task_id, step_name) do nothing
    )
    select array_agg(e.run_id) into v_live from extended e;
    return query
        select u.id, u.id = any(coalesce(v_live, '{}'))
          from unnest(p_run_ids) with ordinality as u(id, n) order by u.n;
end $$;

revoke execute on function durable.set_checkpoints(text, uuid[], text[], jsonb[]) from public;

-- extend_claims, as before, but locking the runs in run_id order like every batched write, so a
-- worker's heartbeat and its batched checkpoints or completions never wait on each other in a
-- cycle.
create or replace function durable.extend_claims(p_worker_id text, p_run_ids uuid[],
                                                 p_worker_ttl double precision)
returns table (lost_run_id uuid)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
begin
    update durable.workers
       set last_seen_at = v_now, expires_at = v_now + make_interval(secs => p_worker_ttl)
     where worker_id = p_worker_id;
    return query
    with live as (
        select r.run_id from durable.runs r
         where r.run_id = any(p_run_ids) and r.state = 'running' and r.claimed_by = p_worker_id
           and r.lease_expires_at > v_now
         order by r.run_id
           for update
    ), extended as (
        update durable.runs r
           set lease_expires_at = v_now + make_interval(secs => r.lease_s)
          from live where r.run_id = live.run_id
        returning r.run_id
    )
    select u.id from unnest(p_run_ids) as u(id)
     where not exists (select 1 from extended e where e.run_id = u.id);
end $$;

select durable.grant_worker_privileges();
