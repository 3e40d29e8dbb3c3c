-- A worker's writes to the runs it holds: completion, failure, checkpoints, lease extensions,
-- deferral and progress. Each is fenced by the run's lease (see LEASE in 00_model.sql), and each
-- batched form locks its runs in run_id order, so a worker's heartbeat, its batched checkpoints
-- and its batched completions never wait on each other in a cycle.

-- ---------------------------------------------------------------------------------------------
-- completion

create or replace function durable.complete(p_queue text, p_run_id uuid,
                                            p_result jsonb default null)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
    v_run durable.runs;
begin
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    update durable.runs set state = 'completed', finished_at = v_now, reserved = false
     where run_id = p_run_id;
    update durable.tasks set state = 'completed', result = coalesce(p_result, 'null'),
                             finished_at = v_now
     where task_id = v_run.task_id;
    perform pg_notify('durable_done', v_run.task_id::text);
    perform durable.on_tasks_ended(array[v_run.task_id], v_now);
end $$;

-- Complete many runs in one statement and one commit (a worker batches the completions of its
-- runs). Each run is fenced as in complete(): it completes only if it is still running under an
-- unexpired lease; the others are reported, not raised, so one lost lease does not fail the
-- batch. Locks follow the global order: the tasks (sorted), then their runs (sorted). The batch
-- drives the joins (unnest), and random_page_cost = 1.1 has its runs and tasks found by key
-- whatever the table sizes. The ended tasks are announced in one durable_done notification per
-- 200 tasks.
create or replace function durable.complete_runs(p_queue text, p_run_ids uuid[], p_results jsonb[])
returns table (run_id uuid, completed boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
#variable_conflict use_column
declare
    v_now   timestamptz := durable.now();
    v_done  uuid[];
    v_tasks uuid[];
begin
    if coalesce(array_length(p_run_ids, 1), 0) <> coalesce(array_length(p_results, 1), 0) then
        raise exception 'run_ids and results must have the same length' using errcode = 'DU005';
    end if;
    perform 1 from unnest(p_run_ids) as u(id)
      join durable.runs r on r.run_id = u.id
      join durable.tasks t on t.task_id = r.task_id
     order by t.task_id
       for no key update of t;
    with live as (
        select r.run_id from unnest(p_run_ids) as u(id)
          join durable.runs r on r.run_id = u.id
         where r.state = 'running' and r.lease_expires_at > v_now
           and (p_queue is null or r.queue = p_queue)
         order by r.run_id
           for update of r
    ), done_runs as (
        update durable.runs r set state = 'completed', finished_at = v_now, reserved = false
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
    -- one notification per 200 tasks (a payload holds up to 8000 bytes), not one per task
    perform pg_notify('durable_done', string_agg(u.id::text, ',' order by u.n))
       from unnest(v_tasks) with ordinality as u(id, n)
      group by (u.n - 1) / 200;
    perform durable.on_tasks_ended(v_tasks, v_now);
    return query
        select u.id, u.id = any(coalesce(v_done, '{}')) from unnest(p_run_ids) as u(id);
end $$;

-- Everything that follows the end of tasks (completed, failed for good, cancelled): their own
-- waits (and the edges of their waits for several tasks) and dependency edges go, parents
-- awaiting them get their outcome, dependents move on, and the batches they belong to count them.
create or replace function durable.on_tasks_ended(p_task_ids uuid[], p_now timestamptz)
returns void
language plpgsql as $$
begin
    if p_task_ids is null or cardinality(p_task_ids) = 0 then
        return;
    end if;
    with gone as (
        delete from durable.waits w where w.task_id = any(p_task_ids)
        returning w.task_id, w.step_name, w.child_task_ids
    )
    delete from durable.wait_children c using gone
     where gone.child_task_ids is not null
       and c.task_id = gone.task_id and c.step_name = gone.step_name;
    delete from durable.task_dependencies d where d.task_id = any(p_task_ids);
    if exists (select 1 from durable.waits w where w.child_task_id = any(p_task_ids)) then
        perform durable.deliver_child_results(p_task_ids, p_now);
    end if;
    if exists (select 1 from durable.wait_children c where c.child_task_id = any(p_task_ids)) then
        perform durable.deliver_gathered_results(p_task_ids, p_now);
    end if;
    if exists (select 1 from durable.task_dependencies d
                where d.depends_on = any(p_task_ids)) then
        perform durable.resolve_dependents(p_task_ids, p_now);
    end if;
    if exists (select 1 from durable.batch_members m
                where m.task_id = any(p_task_ids) and m.ended_state is null) then
        perform durable.count_batch_members(p_task_ids, p_now);
    end if;
end $$;

-- ---------------------------------------------------------------------------------------------
-- failure

-- Fail the run for p_reason with p_error. Returns the next run's id, or null when the task
-- ended. p_retry_at or p_retry_in (seconds from the database's now) override the retry strategy.
create or replace function durable.fail(p_queue text, p_run_id uuid, p_error jsonb,
                                        p_reason text default 'errored',
                                        p_retry_at timestamptz default null,
                                        p_retry_in double precision default null)
returns uuid
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
    v_run durable.runs;
begin
    if p_reason is null or p_reason not in ('errored', 'job_timeout', 'heartbeat_timeout',
                                            'crash', 'cancelled') then
        raise exception 'unknown failure reason %', p_reason using errcode = 'DU005';
    end if;
    if p_retry_in is not null and p_retry_in < 0 then
        raise exception 'retry_in must be a non-negative number of seconds'
            using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    -- a failure its worker writes: the handler ran
    update durable.runs set reserved = false where run_id = p_run_id and reserved;
    return durable.fail_locked_run(
        v_run, p_reason, p_error,
        coalesce(p_retry_at, v_now + make_interval(secs => p_retry_in)), v_now);
end $$;

-- End a locked, live run as failed (or cancelled) and schedule the next attempt (at p_retry_at,
-- else per the task's retry strategy) or end the task: when its attempts ran out, when its worker
-- recorded the error as not to be retried (p_error.retryable = false: a NonRetryable, a
-- definition's discard_on or retry_on, a result that is not JSON), or when the failure's reason
-- class is one the task's discard_on lists or its retry_on does not (then the error records
-- retryable false too, so the failed work says what happened). The caller holds the task lock.
-- Returns the next run's id, or null when the task ended.
create or replace function durable.fail_locked_run(p_run durable.runs, p_reason text,
                                                   p_error jsonb, p_retry_at timestamptz,
                                                   p_now timestamptz)
returns uuid
language plpgsql as $$
declare
    v_task    durable.tasks;
    v_failure jsonb;
    v_error   jsonb := p_error;
    v_class   text;
begin
    select * into v_task from durable.tasks where task_id = p_run.task_id;
    if p_reason <> 'cancelled' and (v_task.retry_on is not null or v_task.discard_on is not null)
       and (v_error->'retryable') is distinct from 'false'::jsonb then
        v_class := durable.reason_class(p_reason, v_error);
        if v_class = any(coalesce(v_task.discard_on, '{}'))
           or not v_class = any(coalesce(v_task.retry_on, array[v_class])) then
            v_error := case when jsonb_typeof(v_error) = 'object' then v_error
                            else jsonb_build_object('message', v_error) end
                       || jsonb_build_object('retryable', false);
        end if;
    end if;
    update durable.runs
       set state = case when p_reason = 'cancelled' then 'cancelled' else 'failed' end,
           failure_reason = p_reason, error = v_error, finished_at = p_now
     where run_id = p_run.run_id;
    v_failure := jsonb_build_object('reason', p_reason, 'run_id', p_run.run_id,
                                    'attempt', p_run.attempt, 'error', v_error);
    if p_reason <> 'cancelled' and p_run.attempt < v_task.max_attempts
       and (v_error->'retryable') is distinct from 'false'::jsonb then
        update durable.tasks set attempt = p_run.attempt + 1, failure = v_failure,
                                 failed_at = p_now
         where task_id = v_task.task_id;
        return durable.insert_run(
            v_task, p_run.attempt + 1, 'pending',
            coalesce(p_retry_at,
                     p_now + make_interval(
                         secs => durable.next_delay(v_task.retry, p_run.attempt))),
            p_now);
    end if;
    perform durable.end_task_unsuccessfully(
        v_task, case when p_reason = 'cancelled' then 'cancelled' else 'failed' end, v_failure,
        p_now);
    return null;
end $$;

-- Seconds to wait after failed attempt p_attempt, per the task's retry strategy: fixed
-- ({kind: fixed, seconds}) or exponential ({base, factor, max, jitter}; without a strategy, 1 s
-- doubling up to 300 s with 10% jitter).
create or replace function durable.next_delay(p_retry jsonb, p_attempt integer)
returns double precision
language plpgsql volatile as $$
declare
    v_base   double precision := coalesce((p_retry->>'base')::double precision, 1.0);
    v_factor double precision := coalesce((p_retry->>'factor')::double precision, 2.0);
    v_max    double precision := coalesce((p_retry->>'max')::double precision, 300.0);
    v_jitter double precision := coalesce((p_retry->>'jitter')::double precision,
                                          case when p_retry is null then 0.1 else 0.0 end);
    v_n      integer := greatest(p_attempt, 1) - 1;
    v_delay  double precision;
begin
    if p_retry->>'kind' = 'fixed' then
        return coalesce((p_retry->>'seconds')::double precision, 0.0);
    end if;
    if v_factor <= 1 or v_base <= 0 then
        v_delay := v_base;
    elsif v_max <= v_base or v_n * ln(v_factor) >= ln(v_max / v_base) then
        v_delay := v_max;  -- also keeps power() from overflowing
    else
        v_delay := v_base * power(v_factor, v_n);
    end if;
    v_delay := least(v_delay, v_max);
    v_delay := v_delay * (1 + v_jitter * (2 * random() - 1));
    return greatest(0.0, least(v_delay, v_max));
end $$;

-- End a task for good as cancelled (the caller holds its lock), with p_error saying why: its live
-- run, if it has one, ends 'cancelled'. A task that ended meanwhile (p_task was read before an
-- earlier cancel of the caller's ended it: a dependent, a child) is left as it is.
create or replace function durable.cancel_locked_task(p_task durable.tasks, p_error jsonb,
                                                      p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_run durable.runs;
begin
    if (select t.state from durable.tasks t where t.task_id = p_task.task_id) <> 'pending' then
        return;
    end if;
    select * into v_run from durable.runs r
     where r.task_id = p_task.task_id and r.state in ('pending', 'running', 'sleeping') for update;
    if found then
        perform durable.fail_locked_run(v_run, 'cancelled', p_error, null, p_now);
        return;
    end if;
    perform durable.end_task_unsuccessfully(
        p_task, 'cancelled',
        jsonb_build_object('reason', 'cancelled', 'attempt', p_task.attempt, 'error', p_error),
        p_now);
end $$;

-- End the live task p_task (locked by the caller) as 'failed' or 'cancelled' with p_failure
-- (reason, run_id, attempt, error). It is the one place where a task ends without completing
-- (an exhausted or unretried failure, a reap, a cancel, a discard, a cancellation policy, a
-- dependency or a parent that ended), so whatever must follow every such end happens here, in
-- the transaction that ends the task: its waits and dependents are resolved (on_tasks_ended), a
-- cancelled task cancels its children (cancel_children), and a task with an on_discard hook gets
-- the task that runs the hook (record_discard_hook), so that no worker's death loses it.
create or replace function durable.end_task_unsuccessfully(p_task durable.tasks, p_state text,
                                                           p_failure jsonb, p_now timestamptz)
returns void
language plpgsql as $$
begin
    update durable.tasks
       set state = p_state, failure = p_failure, failed_at = p_now, finished_at = p_now
     where task_id = p_task.task_id;
    perform pg_notify('durable_done', p_task.task_id::text);
    perform durable.on_tasks_ended(array[p_task.task_id], p_now);
    if p_state = 'cancelled' then
        perform durable.cancel_children(p_task.task_id, p_now);
    end if;
    if p_task.discard_hook then
        perform durable.record_discard_hook(p_task, p_state, p_failure);
    end if;
end $$;

-- Cancel the live children of task p_parent_id, which was just cancelled: those spawned with
-- on_parent_cancel 'cancel' (the default; 'abandon' runs on) end 'cancelled' with error type
-- 'ParentCancelled', and so, through end_task_unsuccessfully, do their own children. A child is
-- spawned after its parent, so its key sorts after the parent's: locking the children in task_id
-- order, after the parent, keeps the lock order.
create or replace function durable.cancel_children(p_parent_id uuid, p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_child durable.tasks;
begin
    for v_child in
        select * from durable.tasks t
         where t.parent_task_id = p_parent_id and t.state = 'pending'
           and t.on_parent_cancel = 'cancel'
         order by t.task_id
           for no key update
    loop
        perform durable.cancel_locked_task(
            v_child,
            jsonb_build_object('type', 'ParentCancelled',
                               'message', format('parent task %s was cancelled', p_parent_id),
                               'parent', p_parent_id),
            p_now);
    end loop;
end $$;

-- Why a task ended without completing, as its on_discard hook is told: 'exhausted' (its last
-- attempt failed), 'non_retryable' (a failure that was not to be retried ended it before its
-- attempts ran out), 'cancelled' (cancel, cancel_by), 'discarded', 'cancellation_policy',
-- 'dependency_failed' or 'parent_cancelled'.
create or replace function durable.discard_reason(p_state text, p_failure jsonb,
                                                  p_max_attempts integer)
returns text
language sql immutable as $$
    select case
        when p_state = 'failed' then
            case when (p_failure->>'attempt')::integer < p_max_attempts
                      or p_failure->'error'->>'type' = 'NonRetryable'
                      or p_failure->'error'->'retryable' = 'false'::jsonb then 'non_retryable'
                 else 'exhausted' end
        else case p_failure->'error'->>'type'
                 when 'Discarded' then 'discarded'
                 when 'CancellationPolicy' then 'cancellation_policy'
                 when 'DependencyFailed' then 'dependency_failed'
                 when 'ParentCancelled' then 'parent_cancelled'
                 else 'cancelled' end
    end
$$;

-- Record the on_discard hook of p_task, which just ended p_state with p_failure: a task named
-- 'durable.on_discard' on its queue (at its priority), with params {task_id, state, reason (see
-- discard_reason), failure, and run_id, attempt and error of the failure}. A worker that knows
-- the task claims it and calls the hook; one that dies while the hook runs leaves it to another,
-- as with any task, so a hook runs at least once per end. One hook task per end: its key names
-- the run that ended the task.
create or replace function durable.record_discard_hook(p_task durable.tasks, p_state text,
                                                       p_failure jsonb)
returns void
language plpgsql as $$
begin
    perform durable.spawn(
        p_task.queue, 'durable.on_discard',
        jsonb_build_object(
            'task_id', p_task.task_id, 'state', p_state,
            'reason', durable.discard_reason(p_state, p_failure, p_task.max_attempts),
            'failure', p_failure, 'run_id', p_failure->'run_id',
            'attempt', coalesce(p_failure->'attempt', to_jsonb(p_task.attempt)),
            'error', p_failure->'error'),
        jsonb_build_object(
            'idempotency_key',
            format('durable:discard:%s:%s', p_task.task_id,
                   coalesce(p_failure->>'run_id', 'attempt-' || p_task.attempt)),
            'priority', p_task.priority));
end $$;

-- ---------------------------------------------------------------------------------------------
-- leases

-- Extend the lease of a live, unexpired run by p_extend_by (default: its claim's lease) in one
-- fenced statement; raise DU001 otherwise. Its handler runs: it is no longer reserved. Returns
-- the run as updated.
create or replace function durable.extend_live_run(p_queue text, p_run_id uuid,
                                                   p_extend_by double precision, p_now timestamptz)
returns durable.runs
language plpgsql as $$
declare
    v_run durable.runs;
begin
    update durable.runs r
       set lease_expires_at = greatest(r.lease_expires_at,
                                       p_now + make_interval(
                                           secs => coalesce(p_extend_by, r.lease_s))),
           reserved = false
     where r.run_id = p_run_id and r.state = 'running' and r.lease_expires_at > p_now
       and (p_queue is null or r.queue = p_queue)
    returning r.* into v_run;
    if not found then
        perform durable.raise_lease_lost(p_run_id, 'run is not running under an unexpired lease');
    end if;
    return v_run;
end $$;

-- Extend one run's lease; returns when it now expires.
create or replace function durable.extend_claim(p_queue text, p_run_id uuid,
                                                p_extend_by double precision default null)
returns timestamptz
language sql
security definer set search_path = pg_catalog, pg_temp as $$
    select (durable.extend_live_run(p_queue, p_run_id, p_extend_by,
                                    durable.now())).lease_expires_at
$$;

-- A worker's heartbeat, one statement per interval: extend every lease it holds and its own
-- liveness, and record how many of its slots are busy and how many runs it claimed ahead (the
-- workers page; null: not said). p_started: the runs whose handlers started since the worker's
-- last report, no longer reserved (RESERVED in 00_model.sql). Returns the run ids that were not
-- extended (lost: expired, reaped, cancelled).
create or replace function durable.extend_claims(p_worker_id text, p_run_ids uuid[],
                                                 p_worker_ttl double precision,
                                                 p_busy integer default null,
                                                 p_ahead integer default null,
                                                 p_started uuid[] default null)
returns table (lost_run_id uuid)
language plpgsql
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
declare
    v_now timestamptz := durable.now();
begin
    -- a running task past its max_duration is cancelled here even when nobody claims
    perform durable.enforce_cancellations(v_now);
    -- the runs (in run_id order), then the worker's row: the order of claim(), which records
    -- the starts its worker reports before it touches the same row
    return query
    with live as (
        select r.run_id from durable.runs r
         where r.run_id = any(p_run_ids) and r.state = 'running' and r.claimed_by = p_worker_id
           and r.lease_expires_at > v_now
         order by r.run_id
           for update
    ), extended as (
        update durable.runs r
           set lease_expires_at = v_now + make_interval(secs => r.lease_s),
               reserved = r.reserved and not r.run_id = any(coalesce(p_started, '{}'))
          from live where r.run_id = live.run_id
        returning r.run_id
    )
    select u.id from unnest(p_run_ids) as u(id)
     where not exists (select 1 from extended e where e.run_id = u.id);
    update durable.workers
       set last_seen_at = v_now, expires_at = v_now + make_interval(secs => p_worker_ttl),
           busy = coalesce(p_busy, busy), claimed_ahead = coalesce(p_ahead, claimed_ahead),
           stats_at = case when p_busy is null then stats_at else v_now end
     where worker_id = p_worker_id;
end $$;

-- ---------------------------------------------------------------------------------------------
-- checkpoints

-- Record step p_step's value; the write extends the run's lease (by p_extend_by, default its
-- claim's lease).
create or replace function durable.set_checkpoint(p_queue text, p_run_id uuid, p_step text,
                                                  p_value jsonb,
                                                  p_extend_by double precision default null)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now     timestamptz := durable.now();
    v_task_id uuid;
begin
    if p_step is null or length(p_step) = 0 then
        raise exception 'step name must not be empty' using errcode = 'DU005';
    end if;
    v_task_id := (durable.extend_live_run(p_queue, p_run_id, p_extend_by, v_now)).task_id;
    -- a step's recorded result is written once: a later write of the same step changes nothing
    insert into durable.checkpoints (task_id, step_name, value, run_id, created_at)
    values (v_task_id, p_step, coalesce(p_value, 'null'), p_run_id, v_now)
    on conflict (task_id, step_name) do nothing;
end $$;

-- Record many steps' results in one statement and one commit (a worker batches the checkpoints
-- its runs write while another write is in flight: group commit). Each item is fenced as in
-- set_checkpoint(): written only if its run is still running under an unexpired lease, whose
-- lease it then extends; the others are reported, not raised, so one lost lease does not fail the
-- batch. A step already recorded keeps its first value.
create or replace function durable.set_checkpoints(p_queue text, p_run_ids uuid[],
                                                   p_steps text[], p_values jsonb[])
returns table (run_id uuid, written boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
#variable_conflict use_column
declare
    v_now  timestamptz := durable.now();
    v_live uuid[];
begin
    if coalesce(array_length(p_run_ids, 1), 0) <> coalesce(array_length(p_steps, 1), 0)
       or coalesce(array_length(p_run_ids, 1), 0) <> coalesce(array_length(p_values, 1), 0) then
        raise exception 'run_ids, steps and values must have the same length'
            using errcode = 'DU005';
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
                                           v_now + make_interval(secs => r.lease_s)),
               reserved = false
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

-- A task's checkpoints, oldest first: what a later attempt replays.
create or replace function durable.get_checkpoints(p_queue text, p_task_id uuid)
returns table (step_name text, value jsonb, run_id uuid, created_at timestamptz)
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
    if not exists (select 1 from durable.all_tasks t where t.task_id = p_task_id
                    and (p_queue is null or t.queue = p_queue)) then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return query
        select k.step_name, k.value, k.run_id, k.created_at from durable.all_checkpoints k
         where k.task_id = p_task_id order by k.created_at, k.step_name;
end $$;

-- ---------------------------------------------------------------------------------------------
-- deferral and progress

-- Make the run's task claimable again after p_defer_seconds without spending an attempt (an
-- unknown task during a rolling deploy, a release on drain, a snooze): the run ends 'released'.
-- Returns the new run's id.
create or replace function durable.schedule_run(p_queue text, p_run_id uuid,
                                                p_defer_seconds double precision)
returns uuid
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now  timestamptz := durable.now();
    v_run  durable.runs;
    v_task durable.tasks;
begin
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    update durable.runs set state = 'released', finished_at = v_now where run_id = p_run_id;
    select * into v_task from durable.tasks where task_id = v_run.task_id;
    return durable.insert_run(
        v_task, v_run.attempt, 'pending',
        v_now + make_interval(secs => greatest(coalesce(p_defer_seconds, 0), 0)), v_now);
end $$;

-- Record a running task's progress (0 to 100, and any JSON detail); fenced like every write of
-- a run, and extends its lease like a heartbeat.
create or replace function durable.set_progress(p_queue text, p_run_id uuid,
                                                p_pct double precision,
                                                p_detail jsonb default null)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
    v_run durable.runs;
begin
    if p_pct is null or p_pct < 0 or p_pct > 100 or p_pct = 'NaN'::double precision then
        raise exception 'progress must be between 0 and 100, got %', p_pct
            using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    update durable.runs
       set lease_expires_at = greatest(lease_expires_at, v_now + make_interval(secs => lease_s)),
           reserved = false
     where run_id = p_run_id;
    update durable.tasks
       set progress = jsonb_build_object('pct', p_pct, 'detail', p_detail, 'at', v_now,
                                         'run_id', p_run_id)
     where task_id = v_run.task_id;
end $$;
