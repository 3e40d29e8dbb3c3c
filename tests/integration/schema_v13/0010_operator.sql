-- 0010: the operator's view. Failed work and its groups, replay from a checkpoint, discard, and
-- retention by task name and end state.
--
-- FAILED WORK is the set of tasks whose latest failure is not behind them: tasks.failure (the
-- last failed run: reason, run_id, attempt, error) is set and the task has not completed since.
-- A task in it is either dead ('failed': its last attempt failed, or it was cancelled) or
-- 'retrying' (it is live and will run again). An operator's DISCARD takes a task out of it for
-- good: a live task is cancelled, and a discarded task can be neither retried nor replayed.
--
-- A failure's REASON CLASS (transport, validation, timeout, crash, exhausted, unknown) comes from
-- its reason (crash; job_timeout and heartbeat_timeout are timeouts) or, for an error a handler
-- raised, from the class the worker recorded with it (error.reason_class; durable/failures.py).
--
-- REPLAY gives any finished task a new run, keeping its checkpoints (it resumes after the last
-- one), or, from a step, dropping that step's checkpoint and every later one.
--
-- RETENTION: prune_tasks deletes finished tasks older than an age, per end state and task name,
-- in bounded batches (each its own short transaction, SKIP LOCKED); prune_bookkeeping deletes old
-- events, partition turns and stopped workers.

alter table durable.tasks add column discarded_at timestamptz;

create index tasks_failed_work on durable.tasks (queue, task_name)
    where failure is not null and state <> 'completed' and discarded_at is null;

create function durable.reason_class(p_reason text, p_error jsonb) returns text
language sql immutable as $$
    select case
        when p_reason = 'crash' then 'crash'
        when p_reason in ('job_timeout', 'heartbeat_timeout') then 'timeout'
        when p_reason = 'cancelled' and p_error->>'type' = 'CancellationPolicy' then 'timeout'
        when p_error->>'reason_class' in ('transport', 'validation', 'timeout', 'crash',
                                          'exhausted', 'unknown')
            then p_error->>'reason_class'
        else 'unknown'
    end
$$;

-- Newest failure first. p_limit null: every row. Filters that are null do not apply.
create function durable.failed_work(p_queue text, p_task_name text, p_reason text,
                                    p_since timestamptz, p_limit integer,
                                    p_state text default null, p_reason_class text default null,
                                    p_error_type text default null, p_tags text[] default null)
returns table (task_id uuid, run_id uuid, queue text, task_name text, state text,
               attempt integer, max_attempts integer, failure_reason text, reason_class text,
               error jsonb, failed_at timestamptz, last_checkpoint text, tags text[])
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select w.* from (
        select t.task_id, (t.failure->>'run_id')::uuid as run_id, t.queue, t.task_name,
               case when t.state = 'pending' then 'retrying' else 'failed' end as state,
               coalesce((t.failure->>'attempt')::integer, t.attempt) as attempt, t.max_attempts,
               t.failure->>'reason' as failure_reason,
               durable.reason_class(t.failure->>'reason', t.failure->'error') as reason_class,
               t.failure->'error' as error,
               coalesce(r.finished_at, t.finished_at, t.created_at) as failed_at,
               (select k.step_name from durable.checkpoints k where k.task_id = t.task_id
                 order by k.created_at desc, k.step_name desc limit 1) as last_checkpoint,
               t.tags
          from durable.tasks t
          left join durable.runs r on r.run_id = (t.failure->>'run_id')::uuid
         where t.failure is not null and t.state <> 'completed' and t.discarded_at is null
           and (p_queue is null or t.queue = p_queue)
           and (p_task_name is null or t.task_name = p_task_name)
           and (p_reason is null or t.failure->>'reason' = p_reason)
           and (p_error_type is null or t.failure->'error'->>'type' = p_error_type)
           and (p_tags is null or t.tags @> p_tags)
    ) w
     where (p_since is null or w.failed_at >= p_since)
       and (p_state is null or w.state = p_state)
       and (p_reason_class is null or w.reason_class = p_reason_class)
     order by w.failed_at desc, w.task_id
     limit p_limit
$$;

-- Failed work grouped by failure reason x error type x task name (and queue), most frequent first;
-- the filters are failed_work's.
create function durable.failure_groups(p_queue text, p_task_name text, p_reason text,
                                       p_since timestamptz, p_state text default null,
                                       p_reason_class text default null,
                                       p_error_type text default null, p_tags text[] default null)
returns table (failure_reason text, reason_class text, error_type text, task_name text,
               queue text, count bigint, first_seen timestamptz, last_seen timestamptz)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select w.failure_reason, w.reason_class, w.error->>'type', w.task_name, w.queue, count(*),
           min(w.failed_at), max(w.failed_at)
      from durable.failed_work(p_queue, p_task_name, p_reason, p_since, null, p_state,
                               p_reason_class, p_error_type, p_tags) w
     group by 1, 2, 3, 4, 5
     order by count(*) desc, max(w.failed_at) desc
$$;

-- Tasks that ended within the last p_window seconds, per queue and end state (throughput).
create function durable.finished_counts(p_window double precision)
returns table (queue text, state text, count bigint)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select t.queue, t.state, count(*)
      from durable.tasks t
     where t.finished_at >= durable.now() - make_interval(secs => p_window)
     group by 1, 2
     order by 1, 2
$$;

-- A new pending run for a finished task p_task (locked by the caller), which keeps its
-- checkpoints. The options as in retry. A completed task forgets its result (and a failure from
-- before it completed); a failed or cancelled one keeps its failure until it completes, so it
-- shows as 'retrying' failed work meanwhile.
create function durable.restart_task(p_task durable.tasks, p_options jsonb, p_now timestamptz)
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_options jsonb := coalesce(p_options, '{}');
    v_attempt integer := p_task.attempt + 1;
    v_task    durable.tasks;
    v_run_id  uuid;
begin
    if p_task.discarded_at is not null then
        raise exception 'task % was discarded: it ended for good and cannot run again',
            p_task.task_id using errcode = 'DU003', detail = 'discarded';
    end if;
    update durable.tasks t
       set state = 'pending', attempt = v_attempt, finished_at = null, result = null,
           failure = case when t.state = 'completed' then null else t.failure end,
           max_attempts = greatest(coalesce((v_options->>'max_attempts')::integer, t.max_attempts), v_attempt),
           retry = coalesce(v_options->'retry', t.retry),
           timeout_s = coalesce(durable.seconds(v_options->'timeout', 'timeout'), t.timeout_s),
           heartbeat_timeout_s = coalesce(durable.seconds(v_options->'heartbeat_timeout', 'heartbeat_timeout'),
                                          t.heartbeat_timeout_s),
           priority = coalesce((v_options->>'priority')::integer, t.priority),
           cancel_at = null
     where t.task_id = p_task.task_id
    returning * into v_task;
    v_run_id := durable.insert_run(v_task, v_attempt, 'pending',
                                   durable.start_time(v_options, p_now), p_now);
    return query select p_task.task_id, v_run_id, v_attempt, false;
end $$;

-- A new run for a failed or cancelled task; its checkpoints are kept, so finished steps replay.
-- p_options may override max_attempts, retry, timeout, heartbeat_timeout, priority, delay / at.
-- A retried task's cancellation policy no longer applies (the operator chose to run it).
create or replace function durable.retry(p_queue text, p_task_id uuid, p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_task durable.tasks;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    if v_task.state not in ('failed', 'cancelled') then
        raise exception 'task % is % — only failed or cancelled tasks can be retried',
            p_task_id, durable.live_state(v_task) using errcode = 'DU003', detail = v_task.state;
    end if;
    return query select * from durable.restart_task(v_task, p_options, durable.now());
end $$;

-- Run a finished task again (completed, failed or cancelled). Its checkpoints are kept, so it
-- resumes after its last recorded step; with p_from_step, that step's checkpoint and every one
-- recorded after it are dropped first, so the task runs again from that step.
create function durable.replay(p_queue text, p_task_id uuid, p_from_step text default null,
                               p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_task durable.tasks;
    v_at   timestamptz;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    if v_task.state = 'pending' then
        raise exception 'task % is % — only a finished task can be replayed',
            p_task_id, durable.live_state(v_task) using errcode = 'DU003', detail = v_task.state;
    end if;
    if p_from_step is not null then
        select k.created_at into v_at from durable.checkpoints k
         where k.task_id = p_task_id and k.step_name = p_from_step;
        if not found then
            raise exception 'task % has no checkpoint named %', p_task_id, quote_literal(p_from_step)
                using errcode = 'DU005';
        end if;
        delete from durable.checkpoints k where k.task_id = p_task_id and k.created_at >= v_at;
    end if;
    return query select * from durable.restart_task(v_task, p_options, durable.now());
end $$;

-- End a task for good: a live task is cancelled (error type 'Discarded'); a failed or cancelled
-- one stays as it is. Either way it leaves the failed work and can no longer be retried or
-- replayed. Returns the task's state before (discarding twice changes nothing the second time).
create function durable.discard(p_queue text, p_task_id uuid) returns text
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now   timestamptz := durable.now();
    v_task  durable.tasks;
    v_state text;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    v_state := durable.live_state(v_task);
    if v_task.discarded_at is not null then
        return v_state;
    end if;
    if v_task.state = 'completed' then
        raise exception 'task % completed: there is nothing to discard', p_task_id
            using errcode = 'DU003', detail = v_task.state;
    end if;
    if v_task.state = 'pending' then
        perform durable.cancel_locked_task(
            v_task,
            jsonb_build_object('type', 'Discarded', 'message', 'discarded by an operator'),
            v_now);
    end if;
    update durable.tasks set discarded_at = v_now where task_id = p_task_id;
    return v_state;
end $$;

-- Finished tasks of p_states that ended more than p_older_than seconds ago, with their runs,
-- checkpoints, waits and dependency edges: at most p_limit per call (the caller loops; each call
-- is a short transaction). p_task_names: only these task names; p_except_names: not these (the
-- names that have a rule of their own). Live tasks are never deleted by age.
drop function durable.prune_tasks(double precision, text[], integer);
create function durable.prune_tasks(p_older_than double precision, p_states text[],
                                    p_limit integer default 1000, p_task_names text[] default null,
                                    p_except_names text[] default null)
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
           and (p_task_names is null or t.task_name = any(p_task_names))
           and (p_except_names is null or t.task_name <> all(p_except_names))
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
    ), gone_waits as (
        delete from durable.waits w using gone where w.task_id = gone.task_id
    ), gone_edges as (
        delete from durable.task_dependencies d using gone where d.task_id = gone.task_id
    )
    select count(*) into v_count from gone;
    return v_count;
end $$;

-- Events emitted, partition turns served and workers gone more than p_older_than seconds ago, at
-- most p_limit rows of each per call; returns how many rows went. (A wait for an event that was
-- pruned waits for the next emit.)
create function durable.prune_bookkeeping(p_older_than double precision, p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
    v_cutoff timestamptz;
    v_events integer;
    v_turns  integer;
    v_workers integer;
begin
    if p_older_than is null or p_older_than < 0 then
        raise exception 'older_than must be a non-negative number of seconds' using errcode = 'DU005';
    end if;
    v_cutoff := durable.now() - make_interval(secs => p_older_than);
    delete from durable.events e
     where e.name in (select x.name from durable.events x where x.emitted_at < v_cutoff
                       limit greatest(p_limit, 0) for update skip locked);
    get diagnostics v_events = row_count;
    delete from durable.partition_turns p
     where (p.queue, p.partition_key) in (
            select x.queue, x.partition_key from durable.partition_turns x
             where x.served_at < v_cutoff limit greatest(p_limit, 0) for update skip locked);
    get diagnostics v_turns = row_count;
    delete from durable.workers w
     where w.worker_id in (
            select x.worker_id from durable.workers x
             where coalesce(x.stopped_at, x.expires_at) < v_cutoff
               and not exists (select 1 from durable.runs r
                                where r.claimed_by = x.worker_id and r.state = 'running')
             limit greatest(p_limit, 0) for update skip locked);
    get diagnostics v_workers = row_count;
    return v_events + v_turns + v_workers;
end $$;

revoke execute on all functions in schema durable from public;
select durable.grant_worker_privileges();
