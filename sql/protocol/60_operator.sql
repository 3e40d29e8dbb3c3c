-- The operator's functions: reading a task, cancelling, retrying, replaying and discarding it,
-- and the views of queues, failed work and throughput.
--
-- FAILED WORK is the set of tasks whose latest failure is not behind them: tasks.failure (the last
-- failed run: reason, run_id, attempt, error; tasks.failed_at says when) is set and the task has
-- not completed since. A task in it is either dead ('failed': its last attempt failed, or it was
-- cancelled) or 'retrying' (it is live and will run again). An operator's DISCARD takes a task
-- out of it for good: a live task is cancelled, and a discarded task can be neither retried nor
-- replayed.
--
-- A failure's REASON CLASS (transport, validation, timeout, crash, exhausted, unknown) comes from
-- its reason (crash; job_timeout and heartbeat_timeout are timeouts) or, for an error a handler
-- raised, from the class the worker recorded with it (error.reason_class; durable/protocol/
-- failures.py).

-- ---------------------------------------------------------------------------------------------
-- one task

-- The whole task as one JSON document: the task, its derived state, its runs oldest first, what
-- it waits for (an event, a task, several tasks with those still running, or a message on a
-- topic), its dependencies that have not completed yet and the batches it is a member of.
create or replace function durable.get_task(p_queue text, p_task_id uuid) returns jsonb
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_task durable.tasks;
begin
    -- each statement reads hot and history at once (a move commits both sides together)
    select * into v_task from durable.all_tasks t
     where t.task_id = p_task_id and (p_queue is null or t.queue = p_queue);
    if not found then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return to_jsonb(v_task) || jsonb_build_object(
        'state', durable.live_state(v_task),
        'runs', coalesce((select jsonb_agg(to_jsonb(r) order by r.created_at, r.run_id)
                            from durable.all_runs r where r.task_id = p_task_id), '[]'),
        'waiting_for', coalesce((select jsonb_agg(jsonb_build_object(
                                            'step_name', w.step_name, 'event_name', w.event_name,
                                            'child_task_id', w.child_task_id,
                                            'timeout_at', w.timeout_at) || case
                                            when w.topic is not null
                                            then jsonb_build_object('topic', w.topic)
                                            when w.child_task_ids is not null
                                            then jsonb_build_object(
                                                'child_task_ids', w.child_task_ids,
                                                'running_task_ids', array(
                                                    select c.child_task_id
                                                      from durable.wait_children c
                                                     where c.task_id = w.task_id
                                                       and c.step_name = w.step_name
                                                     order by c.child_task_id))
                                            else '{}' end order by w.created_at)
                                   from durable.waits w where w.task_id = p_task_id), '[]'),
        'pending_dependencies', coalesce((select jsonb_agg(d.depends_on order by d.depends_on)
                                            from durable.task_dependencies d
                                           where d.task_id = p_task_id), '[]'),
        'batch_ids', coalesce((select jsonb_agg(distinct m.batch_id)
                                 from durable.batch_members m where m.task_id = p_task_id), '[]'));
end $$;

-- A task's state, result and (once it failed or was cancelled) failure.
create or replace function durable.get_result(p_queue text, p_task_id uuid)
returns table (state text, result jsonb, failure jsonb)
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_task durable.tasks;
begin
    select * into v_task from durable.all_tasks t
     where t.task_id = p_task_id and (p_queue is null or t.queue = p_queue);
    if not found then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return query select durable.live_state(v_task), v_task.result,
                        case when v_task.state in ('failed', 'cancelled') then v_task.failure end;
end $$;

-- Cancel a live task (DU003 for one that ended): its live run, if any, ends 'cancelled'.
create or replace function durable.cancel(p_queue text, p_task_id uuid) returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_task durable.tasks;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    if v_task.state <> 'pending' then
        raise exception 'task % is % and cannot be cancelled', p_task_id, v_task.state
            using errcode = 'DU003', detail = v_task.state;
    end if;
    perform durable.cancel_locked_task(v_task, null, durable.now());
end $$;

-- A new run for a failed or cancelled task; its checkpoints are kept, so finished steps replay.
-- p_options may override max_attempts, retry, timeout, heartbeat_timeout, priority, delay / at.
-- A retried task's cancellation policy no longer applies (the operator chose to run it). With
-- p_revive_dependents, the dependents its end cancelled are revived with it (revive_dependents).
-- Returns the retried task's new run, then one row per revived dependent.
create or replace function durable.retry(p_queue text, p_task_id uuid,
                                         p_options jsonb default '{}',
                                         p_revive_dependents boolean default true)
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now  timestamptz := durable.now();
    v_task durable.tasks;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    if v_task.state not in ('failed', 'cancelled') then
        raise exception 'task % is % — only failed or cancelled tasks can be retried',
            p_task_id, durable.live_state(v_task) using errcode = 'DU003', detail = v_task.state;
    end if;
    return query select * from durable.restart_task(v_task, p_options, v_now);
    if coalesce(p_revive_dependents, true) then
        return query select * from durable.revive_dependents(p_task_id, v_now);
    end if;
end $$;

-- A new pending run for a finished task p_task (locked by the caller), which keeps its
-- checkpoints. The options as in retry. A completed task forgets its result (and a failure from
-- before it completed); a failed or cancelled one keeps its failure until it completes, so it
-- shows as 'retrying' failed work meanwhile. A task with dependencies waits again for those that
-- have not completed; one of them that failed or was cancelled refuses the restart (DU003): the
-- task could never run.
create or replace function durable.restart_task(p_task durable.tasks, p_options jsonb,
                                                p_now timestamptz)
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_options jsonb := coalesce(p_options, '{}');
    v_attempt integer := p_task.attempt + 1;
    v_task    durable.tasks;
    v_run_id  uuid;
    v_broken  durable.tasks;
begin
    if p_task.discarded_at is not null then
        raise exception 'task % was discarded: it ended for good and cannot run again',
            p_task.task_id using errcode = 'DU003', detail = 'discarded';
    end if;
    v_broken := durable.lock_dependencies(p_task);
    if v_broken.task_id is not null then
        raise exception 'task % depends on task %, which ended % — retry that one first (its '
                        'retry revives this task)', p_task.task_id, v_broken.task_id,
                        v_broken.state using errcode = 'DU003', detail = 'dependency';
    end if;
    update durable.tasks t
       set state = 'pending', attempt = v_attempt, finished_at = null, result = null,
           failure = case when t.state = 'completed' then null else t.failure end,
           max_attempts = greatest(coalesce((v_options->>'max_attempts')::integer,
                                            t.max_attempts),
                                   v_attempt),
           retry = coalesce(v_options->'retry', t.retry),
           timeout_s = coalesce(durable.seconds(v_options->'timeout', 'timeout'), t.timeout_s),
           heartbeat_timeout_s = coalesce(durable.seconds(v_options->'heartbeat_timeout',
                                                          'heartbeat_timeout'),
                                          t.heartbeat_timeout_s),
           priority = coalesce((v_options->>'priority')::integer, t.priority),
           cancel_at = null
     where t.task_id = p_task.task_id
    returning * into v_task;
    v_run_id := durable.insert_dependent_run(v_task, v_attempt,
                                             durable.start_time(v_options, p_now), p_now);
    return query select p_task.task_id, v_run_id, v_attempt, false;
end $$;

-- Lock the dependencies of p_task (for share, in task_id order), so that none ends unseen while
-- the caller makes p_task wait for them again; returns one of them that failed or was cancelled
-- (all fields null: none did).
create or replace function durable.lock_dependencies(p_task durable.tasks)
returns durable.tasks
language plpgsql as $$
declare
    v_broken durable.tasks;
begin
    if p_task.depends_on is null then
        return v_broken;
    end if;
    perform durable.share_tasks(p_task.depends_on);
    select * into v_broken from durable.all_tasks t
     where t.task_id = any(p_task.depends_on) and t.state in ('failed', 'cancelled')
     order by t.task_id limit 1;
    return v_broken;
end $$;

-- A new pending run (attempt p_attempt) of p_task, restarted, that waits again for its
-- dependencies that have not completed (locked by the caller: lock_dependencies): their edges
-- come back and the run waits with available_at 'infinity' until they complete; with none
-- open, it is due at p_at. Returns the run's id.
create or replace function durable.insert_dependent_run(p_task durable.tasks, p_attempt integer,
                                                        p_at timestamptz, p_now timestamptz)
returns uuid
language plpgsql as $$
begin
    if p_task.depends_on is not null then
        insert into durable.task_dependencies (task_id, depends_on)
        select p_task.task_id, t.task_id from durable.tasks t
         where t.task_id = any(p_task.depends_on) and t.state = 'pending'
        on conflict do nothing;
        if found then
            return durable.insert_run(p_task, p_attempt, 'pending', 'infinity', p_now);
        end if;
    end if;
    return durable.insert_run(p_task, p_attempt, 'pending', p_at, p_now);
end $$;

-- Whether p_task was cancelled because task p_dependency ended (error type 'DependencyFailed'
-- naming it) and may run again (not discarded).
create or replace function durable.cancelled_by(p_task durable.all_tasks, p_dependency uuid)
returns boolean
language sql immutable as $$
    select p_task.state = 'cancelled' and p_task.discarded_at is null
           and p_task.failure->'error'->>'type' = 'DependencyFailed'
           and p_task.failure->'error'->>'dependency' = p_dependency::text
$$;

-- The dependents that a retry of each of p_task_ids revives: those its end cancelled
-- (cancelled_by), and those theirs cancelled in turn, down the chain; but not one that waits for
-- another task (outside the chain) that failed or was cancelled: it would be cancelled again at
-- once, so it stays cancelled, and so do the dependents it cancelled. dependency: the task whose
-- end cancelled it. Oldest first, so a dependent comes after its dependencies (a task can only
-- depend on tasks that exist already). What retry() revives, and what a dry run lists.
create or replace function durable.revivable_dependents(p_task_ids uuid[])
returns table (task_id uuid, queue text, task_name text, dependency uuid)
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_root    uuid;
    v_found   uuid[];
    v_blocked uuid[];
    v_all     uuid[] := '{}';
begin
    foreach v_root in array coalesce(p_task_ids, '{}') loop
        with recursive chain(id) as (
            select t.task_id from durable.all_tasks t
             where t.depends_on @> array[v_root] and durable.cancelled_by(t, v_root)
            union
            select t.task_id from chain c join durable.all_tasks t on t.depends_on @> array[c.id]
             where durable.cancelled_by(t, c.id)
        )
        select coalesce(array_agg(chain.id), '{}') into v_found from chain;
        loop
            select array_agg(t.task_id) into v_blocked from durable.all_tasks t
             where t.task_id = any(v_found)
               and exists (select 1 from durable.all_tasks x
                            where x.task_id = any(t.depends_on) and x.task_id <> v_root
                              and x.task_id <> all(v_found)
                              and x.state in ('failed', 'cancelled'));
            exit when v_blocked is null;
            v_found := array(select f from unnest(v_found) as f where f <> all(v_blocked));
        end loop;
        v_all := v_all || v_found;
    end loop;
    return query
        select t.task_id, t.queue, t.task_name, (t.failure->'error'->>'dependency')::uuid
          from durable.all_tasks t
         where t.task_id = any(v_all)
         order by t.created_at, t.task_id;
end $$;

-- Revive the dependents that the end of task p_task_id cancelled (revivable_dependents), oldest
-- first: each becomes pending again with a new run of the same attempt (its cancelled run never
-- started) that waits for its dependencies again, and leaves the failed work (the failure was
-- its dependency's). Returns one row per revived task.
create or replace function durable.revive_dependents(p_task_id uuid, p_now timestamptz)
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_ids    uuid[];
    v_task   durable.tasks;
    v_broken durable.tasks;
    v_run_id uuid;
begin
    v_ids := array(select d.task_id from durable.revivable_dependents(array[p_task_id]) d);
    if cardinality(v_ids) = 0 then
        return;
    end if;
    -- back from history first (a row moved back is this transaction's until it commits: the
    -- mover cannot see it); twice, for one that the mover took while this locked the others
    for i in 1..2 loop
        perform durable.reopen_task(x.id) from unnest(v_ids) as x(id) order by x.id;
        perform 1 from durable.tasks t where t.task_id = any(v_ids) order by t.task_id
           for no key update;
    end loop;
    for v_task in
        select t.* from durable.tasks t where t.task_id = any(v_ids)
         order by t.created_at, t.task_id
    loop
        continue when v_task.state <> 'cancelled' or v_task.discarded_at is not null;
        v_broken := durable.lock_dependencies(v_task);
        continue when v_broken.task_id is not null;  -- changed meanwhile: it stays cancelled
        update durable.tasks t
           set state = 'pending', finished_at = null, failure = null, failed_at = null,
               cancel_at = null
         where t.task_id = v_task.task_id
        returning * into v_task;
        v_run_id := durable.insert_dependent_run(
            v_task, v_task.attempt, greatest(p_now, coalesce(v_task.scheduled_at, p_now)), p_now);
        return query select v_task.task_id, v_run_id, v_task.attempt, false;
    end loop;
end $$;

-- Run a finished task again (completed, failed or cancelled). Its checkpoints are kept, so it
-- resumes after its last recorded step; with p_from_step, that step's checkpoint and every one
-- recorded after it are dropped first, so the task runs again from that step.
create or replace function durable.replay(p_queue text, p_task_id uuid,
                                          p_from_step text default null,
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
            raise exception 'task % has no checkpoint named %', p_task_id,
                quote_literal(p_from_step) using errcode = 'DU005';
        end if;
        delete from durable.checkpoints k where k.task_id = p_task_id and k.created_at >= v_at;
    end if;
    return query select * from durable.restart_task(v_task, p_options, durable.now());
end $$;

-- End a task for good: a live task is cancelled (error type 'Discarded'); a failed or cancelled
-- one stays as it is. Either way it leaves the failed work and can no longer be retried or
-- replayed. Returns the task's state before (discarding twice changes nothing the second time).
create or replace function durable.discard(p_queue text, p_task_id uuid) returns text
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

-- ---------------------------------------------------------------------------------------------
-- views

-- How many tasks per queue and state (a live task counts in its live run's state), optionally
-- only those carrying all of p_tags.
create or replace function durable.queue_counts(p_tags text[] default null)
returns table (queue text, state text, count bigint)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select t.queue, coalesce(r.state, t.state) as state, count(*)
      from durable.all_tasks t
      left join durable.runs r on t.state = 'pending' and r.task_id = t.task_id
                              and r.state in ('pending', 'running', 'sleeping')
     where p_tags is null or t.tags @> p_tags
     group by 1, 2
     order by 1, 2
$$;

-- The newest failed runs, at most p_limit, optionally of one queue and with all of p_tags.
create or replace function durable.list_failed_runs(p_queue text, p_limit integer,
                                                    p_tags text[] default null)
returns table (task_id uuid, run_id uuid, queue text, task_name text, task_state text,
               attempt integer, max_attempts integer, failure_reason text, error jsonb,
               finished_at timestamptz)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select t.task_id, r.run_id, r.queue, t.task_name, durable.state_of(t.state, t.task_id),
           r.attempt, t.max_attempts, r.failure_reason, r.error, r.finished_at
      from durable.all_runs r join durable.all_tasks t on t.task_id = r.task_id
     where r.state = 'failed' and (p_queue is null or r.queue = p_queue)
       and (p_tags is null or t.tags @> p_tags)
     order by r.finished_at desc
     limit p_limit
$$;

-- A failure's reason class (see the top of this file).
create or replace function durable.reason_class(p_reason text, p_error jsonb) returns text
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

-- The failed work's rows, unordered and without their last checkpoint: what failed_work and
-- failure_groups share. A plain SQL function, so it is inlined into their queries and planned
-- with them. Filters that are null do not apply.
create or replace function durable.failed_work_rows(p_queue text, p_task_name text,
                                                    p_reason text, p_since timestamptz,
                                                    p_state text, p_reason_class text,
                                                    p_error_type text, p_tags text[])
returns table (task_id uuid, run_id uuid, queue text, task_name text, state text,
               attempt integer, max_attempts integer, failure_reason text, reason_class text,
               error jsonb, failed_at timestamptz, tags text[])
language sql stable as $$
    select w.* from (
        select t.task_id, (t.failure->>'run_id')::uuid as run_id, t.queue, t.task_name,
               case when t.state = 'pending' then 'retrying' else 'failed' end as state,
               coalesce((t.failure->>'attempt')::integer, t.attempt) as attempt, t.max_attempts,
               t.failure->>'reason' as failure_reason,
               durable.reason_class(t.failure->>'reason', t.failure->'error') as reason_class,
               t.failure->'error' as error,
               t.failed_at,
               t.tags
          from durable.all_tasks t
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
$$;

-- The failed work, newest failure first, each row with its last checkpoint (looked up for the
-- rows returned only). p_limit null: every row. Filters that are null do not apply.
create or replace function durable.failed_work(p_queue text, p_task_name text, p_reason text,
                                               p_since timestamptz, p_limit integer,
                                               p_state text default null,
                                               p_reason_class text default null,
                                               p_error_type text default null,
                                               p_tags text[] default null)
returns table (task_id uuid, run_id uuid, queue text, task_name text, state text,
               attempt integer, max_attempts integer, failure_reason text, reason_class text,
               error jsonb, failed_at timestamptz, last_checkpoint text, tags text[])
language sql stable
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
    select w.task_id, w.run_id, w.queue, w.task_name, w.state, w.attempt, w.max_attempts,
           w.failure_reason, w.reason_class, w.error, w.failed_at,
           (select k.step_name from durable.all_checkpoints k where k.task_id = w.task_id
             order by k.created_at desc, k.step_name desc limit 1) as last_checkpoint,
           w.tags
      from durable.failed_work_rows(p_queue, p_task_name, p_reason, p_since, p_state,
                                    p_reason_class, p_error_type, p_tags) w
     order by w.failed_at desc, w.task_id
     limit p_limit
$$;

-- Failed work grouped by failure reason x error type x task name (and queue), most frequent
-- first; the filters are failed_work's.
create or replace function durable.failure_groups(p_queue text, p_task_name text, p_reason text,
                                                  p_since timestamptz, p_state text default null,
                                                  p_reason_class text default null,
                                                  p_error_type text default null,
                                                  p_tags text[] default null)
returns table (failure_reason text, reason_class text, error_type text, task_name text,
               queue text, count bigint, first_seen timestamptz, last_seen timestamptz)
language sql stable
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
    select w.failure_reason, w.reason_class, w.error->>'type', w.task_name, w.queue, count(*),
           min(w.failed_at), max(w.failed_at)
      from durable.failed_work_rows(p_queue, p_task_name, p_reason, p_since, p_state,
                                    p_reason_class, p_error_type, p_tags) w
     group by 1, 2, 3, 4, 5
     order by count(*) desc, max(w.failed_at) desc
$$;

-- Tasks that ended within the last p_window seconds, per queue and end state (throughput). The
-- window's start is computed once (durable.now() is volatile: compared row by row, it would keep
-- the index on finished_at from bounding the scan), so the cost is the window's tasks.
create or replace function durable.finished_counts(p_window double precision)
returns table (queue text, state text, count bigint)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select t.queue, t.state, count(*)
      from durable.all_tasks t
     where t.finished_at >= (select durable.now() - make_interval(secs => p_window))
     group by 1, 2
     order by 1, 2
$$;
