-- What users of Oban, River, Absurd and DBOS look for on day one, in the protocol:
--
-- * SLEEP and EVENTS park a run. The running run ends 'suspended' and a new run of the same
--   attempt waits 'sleeping' until its available_at (the wake-up time; 'infinity' for an event
--   with no timeout). claim() takes sleeping runs whose time has come like pending ones, so a
--   sleeper wakes whatever happened to the workers meanwhile. An event is stored (durable.events)
--   so one emitted before the wait is not lost; emit_event wakes every waiter (durable.waits) and
--   records the payload as the waiter's checkpoint, so its replay finds it.
-- * CHILD TASKS: a parent awaiting a child waits like an event; the child's end delivers its
--   outcome (on_tasks_ended).
-- * UNIQUENESS: spawn's options.unique = {keys, states, period, replace, debounce}. A duplicate
--   (same queue, task name and the listed params keys) within the period and states returns the
--   existing task; replace updates the listed fields of a not yet started task; debounce pushes
--   its start time forward.
-- * DEPENDENCIES: options.depends_on = [task_id, ...]. The task's run waits (available_at
--   'infinity') until all of them completed; one that ends failed or cancelled cancels it, with an
--   error naming that dependency.
-- * CANCELLATION POLICIES: options.cancellation = {max_delay, max_duration}. tasks.cancel_at holds
--   the earliest moment a policy may end the task; enforce_cancellations() (run by every claim and
--   every worker heartbeat) re-checks the tasks whose moment passed.
-- * TAGS (tasks.tags), PROGRESS (set_progress, fenced like any write of a run), PARTITIONS
--   (options.partition_key: claim() takes runs round-robin across partitions) and LIMITS
--   (durable.limits: a per task name concurrency limit and a rate limit, cluster-wide; claims on
--   a queue with limits serialize on its limit rows).
--
-- Lock order stays: task rows (in task_id order) before their run rows.

-- ---------------------------------------------------------------------------------------------
-- schema

alter table durable.tasks
    add column tags           text[] not null default '{}',
    add column progress       jsonb,
    add column partition_key  text,
    add column parent_task_id uuid,
    add column depends_on     uuid[],
    add column unique_key     text,
    add column cancellation   jsonb,
    add column scheduled_at   timestamptz,
    add column cancel_at      timestamptz,
    add column discard_hook   boolean not null default false;

create index tasks_unique on durable.tasks (queue, unique_key, created_at desc)
    where unique_key is not null;
create index tasks_cancel_at on durable.tasks (cancel_at)
    where cancel_at is not null and state = 'pending';
create index tasks_parent on durable.tasks (parent_task_id) where parent_task_id is not null;

alter table durable.runs add column partition_key text;
alter table durable.runs drop constraint runs_state_check;
alter table durable.runs add constraint runs_state_check
    check (state in ('pending', 'running', 'sleeping', 'completed', 'failed', 'cancelled',
                     'released', 'suspended'));

-- sleeping runs are claimed like pending ones once their time has come
drop index durable.runs_claim;
create index runs_claim on durable.runs (queue, priority desc, available_at, run_id)
    where state in ('pending', 'sleeping');
create index runs_claim_partition on durable.runs (queue, partition_key, priority desc,
                                                   available_at, run_id)
    where state in ('pending', 'sleeping') and partition_key is not null;

create table durable.events (
    name       text primary key,
    payload    jsonb,
    emitted_at timestamptz not null
);

-- A parked run waiting for an event or for a child task; run_id is the sleeping run to wake.
create table durable.waits (
    task_id       uuid not null,
    step_name     text not null,
    run_id        uuid not null,
    event_name    text,
    child_task_id uuid,
    timeout_at    timestamptz,
    created_at    timestamptz not null,
    primary key (task_id, step_name),
    check ((event_name is null) <> (child_task_id is null))
);
create index waits_event on durable.waits (event_name) where event_name is not null;
create index waits_child on durable.waits (child_task_id) where child_task_id is not null;

-- The dependencies of a waiting task that have not completed yet.
create table durable.task_dependencies (
    task_id    uuid not null,
    depends_on uuid not null,
    primary key (task_id, depends_on)
);
create index task_dependencies_on on durable.task_dependencies (depends_on);

-- When each partition of a queue last got a run ('' is the unpartitioned runs): claims serve the
-- partition served longest ago first, so single-run claims take turns too.
create table durable.partition_turns (
    queue         text not null,
    partition_key text not null,
    served_at     timestamptz not null,
    primary key (queue, partition_key)
);

create table durable.limits (
    queue         text not null,
    task_name     text not null,
    max_running   integer check (max_running >= 1),
    rate_allowed  integer check (rate_allowed >= 1),
    rate_period_s double precision check (rate_period_s > 0),
    recent_starts timestamptz[] not null default '{}',
    primary key (queue, task_name),
    check ((rate_allowed is null) = (rate_period_s is null))
);

-- ---------------------------------------------------------------------------------------------
-- internal helpers

-- A new run of p_task (its queue, priority and partition copied); notifies when claimable now.
create function durable.insert_run(p_task durable.tasks, p_attempt integer, p_state text,
                                   p_at timestamptz, p_now timestamptz)
returns uuid
language plpgsql as $$
declare
    v_id uuid := durable.uuidv7();
begin
    insert into durable.runs (run_id, task_id, queue, attempt, priority, partition_key, state,
                              available_at, created_at)
    values (v_id, p_task.task_id, p_task.queue, p_attempt, p_task.priority, p_task.partition_key,
            p_state, p_at, p_now);
    if p_at <= p_now then
        perform pg_notify('durable_work', p_task.queue);
    end if;
    return v_id;
end $$;

-- When a spawn's task should first start: options.at, or now + options.delay.
create function durable.start_time(p_options jsonb, p_now timestamptz) returns timestamptz
language sql stable as $$
    select case when p_options ? 'at' then (p_options->>'at')::timestamptz
                else p_now + make_interval(secs => coalesce(durable.seconds(p_options->'delay', 'delay'), 0))
           end
$$;

-- A JSON list of strings as text[] (null: empty); p_what names it in the error.
create function durable.text_list(p_value jsonb, p_what text) returns text[]
language plpgsql immutable as $$
begin
    if p_value is null or jsonb_typeof(p_value) = 'null' then
        return '{}';
    end if;
    if jsonb_typeof(p_value) <> 'array'
       or exists (select 1 from jsonb_array_elements(p_value) e where jsonb_typeof(e) <> 'string') then
        raise exception '% must be a list of strings, got %', p_what, p_value using errcode = 'DU005';
    end if;
    return array(select jsonb_array_elements_text(p_value));
end $$;

-- The first moment a cancellation policy may end a task scheduled at p_at (null: no policy).
create function durable.first_cancel_at(p_cancellation jsonb, p_at timestamptz)
returns timestamptz
language sql immutable as $$
    select p_at + make_interval(secs => least(
               durable.seconds(p_cancellation->'max_delay', 'cancellation.max_delay'),
               durable.seconds(p_cancellation->'max_duration', 'cancellation.max_duration')))
$$;

-- Park the live run p_run (locked, after its task): it ends 'suspended' and a run of the same
-- attempt sleeps until p_wake_at. Returns the sleeping run's id.
create function durable.suspend_run(p_run durable.runs, p_wake_at timestamptz, p_now timestamptz)
returns uuid
language plpgsql as $$
declare
    v_task durable.tasks;
begin
    update durable.runs set state = 'suspended', finished_at = p_now where run_id = p_run.run_id;
    select * into v_task from durable.tasks where task_id = p_run.task_id;
    return durable.insert_run(v_task, p_run.attempt, 'sleeping', p_wake_at, p_now);
end $$;

create function durable.record_step(p_task_id uuid, p_step text, p_value jsonb, p_run_id uuid,
                                    p_now timestamptz)
returns void
language sql as $$
    insert into durable.checkpoints (task_id, step_name, value, run_id, created_at)
    values (p_task_id, p_step, coalesce(p_value, 'null'), p_run_id, p_now)
    on conflict (task_id, step_name) do nothing
$$;

-- Wake a parked task now: its sleeping run becomes claimable.
create function durable.wake(p_run_id uuid, p_now timestamptz) returns void
language plpgsql as $$
declare
    v_queue text;
begin
    update durable.runs set available_at = p_now
     where run_id = p_run_id and state = 'sleeping' and available_at > p_now
    returning queue into v_queue;
    if found then
        perform pg_notify('durable_work', v_queue);
    end if;
end $$;

-- End a task for good as cancelled (the caller holds its lock), with p_error saying why.
create function durable.cancel_locked_task(p_task durable.tasks, p_error jsonb, p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_run durable.runs;
begin
    select * into v_run from durable.runs r
     where r.task_id = p_task.task_id and r.state in ('pending', 'running', 'sleeping') for update;
    if found then
        perform durable.fail_locked_run(v_run, 'cancelled', p_error, null, p_now);
        return;
    end if;
    update durable.tasks
       set state = 'cancelled', finished_at = p_now,
           failure = jsonb_build_object('reason', 'cancelled', 'error', p_error)
     where task_id = p_task.task_id;
    perform pg_notify('durable_done', p_task.task_id::text);
    perform durable.on_tasks_ended(array[p_task.task_id], p_now);
end $$;

-- Deliver the outcome of ended tasks to the parents awaiting them.
create function durable.deliver_child_results(p_task_ids uuid[], p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_wait record;
begin
    for v_wait in
        select w.*, jsonb_build_object('state', c.state, 'result', c.result, 'failure', c.failure) as doc
          from durable.waits w join durable.tasks c on c.task_id = w.child_task_id
         where w.child_task_id = any(p_task_ids)
         order by w.task_id
    loop
        perform 1 from durable.tasks t where t.task_id = v_wait.task_id for no key update;
        perform durable.record_step(v_wait.task_id, v_wait.step_name, v_wait.doc, v_wait.run_id, p_now);
        delete from durable.waits w where w.task_id = v_wait.task_id and w.step_name = v_wait.step_name;
        perform durable.wake(v_wait.run_id, p_now);
    end loop;
end $$;

-- Ended tasks release their dependents: a completed one lets a dependent run once all of its
-- dependencies completed; a failed or cancelled one cancels its dependents, naming itself.
create function durable.resolve_dependents(p_task_ids uuid[], p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_edge record;
    v_task durable.tasks;
begin
    for v_edge in
        select d.task_id, d.depends_on, t.state as dep_state
          from durable.task_dependencies d join durable.tasks t on t.task_id = d.depends_on
         where d.depends_on = any(p_task_ids)
         order by d.task_id, d.depends_on
    loop
        select * into v_task from durable.tasks t where t.task_id = v_edge.task_id for no key update;
        if not found or v_task.state <> 'pending' then
            delete from durable.task_dependencies d where d.task_id = v_edge.task_id;
            continue;
        end if;
        if v_edge.dep_state = 'completed' then
            delete from durable.task_dependencies d
             where d.task_id = v_edge.task_id and d.depends_on = v_edge.depends_on;
            if not exists (select 1 from durable.task_dependencies d where d.task_id = v_edge.task_id) then
                perform durable.wake_pending(v_task, p_now);
            end if;
        elsif v_edge.dep_state in ('failed', 'cancelled') then
            delete from durable.task_dependencies d where d.task_id = v_edge.task_id;
            perform durable.cancel_locked_task(
                v_task,
                jsonb_build_object(
                    'type', 'DependencyFailed',
                    'message', format('dependency %s ended %s', v_edge.depends_on, v_edge.dep_state),
                    'dependency', v_edge.depends_on),
                p_now);
        end if;
    end loop;
end $$;

-- A task whose dependencies all completed: its pending run may start at its scheduled time.
create function durable.wake_pending(p_task durable.tasks, p_now timestamptz) returns void
language plpgsql as $$
declare
    v_at timestamptz := greatest(p_now, coalesce(p_task.scheduled_at, p_now));
begin
    update durable.runs set available_at = v_at
     where task_id = p_task.task_id and state = 'pending';
    if found and v_at <= p_now then
        perform pg_notify('durable_work', p_task.queue);
    end if;
end $$;

-- Everything that follows the end of tasks (completed, failed for good, cancelled): their own
-- waits and dependency edges go, parents awaiting them get their outcome, dependents move on.
create function durable.on_tasks_ended(p_task_ids uuid[], p_now timestamptz) returns void
language plpgsql as $$
begin
    if p_task_ids is null or cardinality(p_task_ids) = 0 then
        return;
    end if;
    delete from durable.waits w where w.task_id = any(p_task_ids);
    delete from durable.task_dependencies d where d.task_id = any(p_task_ids);
    if exists (select 1 from durable.waits w where w.child_task_id = any(p_task_ids)) then
        perform durable.deliver_child_results(p_task_ids, p_now);
    end if;
    if exists (select 1 from durable.task_dependencies d where d.depends_on = any(p_task_ids)) then
        perform durable.resolve_dependents(p_task_ids, p_now);
    end if;
end $$;

create or replace function durable.fail_locked_run(p_run durable.runs, p_reason text, p_error jsonb,
                                                   p_retry_at timestamptz, p_now timestamptz)
returns uuid
language plpgsql as $$
declare
    v_task    durable.tasks;
    v_failure jsonb;
begin
    update durable.runs
       set state = case when p_reason = 'cancelled' then 'cancelled' else 'failed' end,
           failure_reason = p_reason, error = p_error, finished_at = p_now
     where run_id = p_run.run_id;
    select * into v_task from durable.tasks where task_id = p_run.task_id;
    v_failure := jsonb_build_object('reason', p_reason, 'run_id', p_run.run_id,
                                    'attempt', p_run.attempt, 'error', p_error);
    if p_reason <> 'cancelled' and p_run.attempt < v_task.max_attempts then
        update durable.tasks set attempt = p_run.attempt + 1, failure = v_failure
         where task_id = v_task.task_id;
        return durable.insert_run(
            v_task, p_run.attempt + 1, 'pending',
            coalesce(p_retry_at,
                     p_now + make_interval(secs => durable.next_delay(v_task.retry, p_run.attempt))),
            p_now);
    end if;
    update durable.tasks
       set state = case when p_reason = 'cancelled' then 'cancelled' else 'failed' end,
           failure = v_failure, finished_at = p_now
     where task_id = v_task.task_id;
    perform pg_notify('durable_done', v_task.task_id::text);
    perform durable.on_tasks_ended(array[v_task.task_id], p_now);
    return null;
end $$;

-- Reap the runs of p_queue whose lease lapsed (see 0001). A task that thereby failed for good and
-- has an on_discard hook gets a 'durable.on_discard' task on its queue: the worker that ran its
-- last attempt is gone, so another worker calls the hook (once per task and attempt).
create or replace function durable.reap_runs(p_queue text, p_now timestamptz) returns integer
language plpgsql as $$
declare
    v_cand   record;
    v_run    durable.runs;
    v_reason text;
    v_error  jsonb;
    v_next   uuid;
    v_count  integer := 0;
begin
    for v_cand in
        select r.run_id, r.task_id, r.claimed_by, r.lease_expires_at,
               case when w.worker_id is null or w.stopped_at is not null or w.expires_at <= p_now
                        then 'crash'
                    when w.last_seen_at > r.lease_expires_at then 'heartbeat_timeout'
               end as reason
          from durable.runs r
          left join durable.workers w on w.worker_id = r.claimed_by
         where r.queue = p_queue and r.state = 'running' and r.lease_expires_at <= p_now
           -- only runs whose reason is known, so that waiting runs never fill the limit
           and (w.worker_id is null or w.stopped_at is not null or w.expires_at <= p_now
                or w.last_seen_at > r.lease_expires_at)
         limit 100
    loop
        continue when v_cand.reason is null;
        perform 1 from durable.tasks t where t.task_id = v_cand.task_id
            for no key update skip locked;
        continue when not found;
        select * into v_run from durable.runs r where r.run_id = v_cand.run_id for update;
        continue when v_run.state <> 'running' or v_run.lease_expires_at > p_now;
        v_reason := v_cand.reason;
        v_error := jsonb_build_object(
            'type', case when v_reason = 'crash' then 'WorkerCrashed' else 'HeartbeatTimeout' end,
            'message', format('lease expired at %s; worker %s %s', v_run.lease_expires_at,
                              v_run.claimed_by,
                              case when v_reason = 'crash' then 'is gone'
                                   else 'is alive but stopped renewing the lease' end));
        -- two statements: a query does not see what a function it calls wrote
        v_next := durable.fail_locked_run(v_run, v_reason, v_error, null, p_now);
        if v_next is null and (select t.discard_hook and t.state = 'failed' from durable.tasks t
                                where t.task_id = v_run.task_id) then
            perform durable.spawn(
                v_run.queue, 'durable.on_discard',
                jsonb_build_object('task_id', v_run.task_id, 'run_id', v_run.run_id,
                                   'attempt', v_run.attempt, 'reason', v_reason, 'error', v_error),
                jsonb_build_object('idempotency_key',
                                   format('durable:discard:%s:%s', v_run.task_id, v_run.attempt)));
        end if;
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

-- Cancel the tasks whose cancellation policy says so; re-arm cancel_at of the others. Bounded.
create function durable.enforce_cancellations(p_now timestamptz) returns integer
language plpgsql as $$
declare
    v_task      durable.tasks;
    v_max_delay double precision;
    v_max_dur   double precision;
    v_first     timestamptz;
    v_count     integer := 0;
begin
    for v_task in
        select * from durable.tasks t
         where t.cancel_at <= p_now and t.state = 'pending'
         order by t.cancel_at
         limit 100
           for no key update skip locked
    loop
        v_max_delay := (v_task.cancellation->>'max_delay')::double precision;
        v_max_dur := (v_task.cancellation->>'max_duration')::double precision;
        select min(r.started_at) into v_first from durable.runs r
         where r.task_id = v_task.task_id and r.started_at is not null;
        if v_first is null and v_max_delay is not null
           and p_now >= coalesce(v_task.scheduled_at, v_task.created_at)
                        + make_interval(secs => v_max_delay) then
            perform durable.cancel_locked_task(
                v_task,
                jsonb_build_object('type', 'CancellationPolicy',
                                   'message', format('not started within max_delay %ss', v_max_delay)),
                p_now);
            v_count := v_count + 1;
        elsif v_first is not null and v_max_dur is not null
              and p_now >= v_first + make_interval(secs => v_max_dur) then
            perform durable.cancel_locked_task(
                v_task,
                jsonb_build_object('type', 'CancellationPolicy',
                                   'message', format('ran longer than max_duration %ss', v_max_dur)),
                p_now);
            v_count := v_count + 1;
        else
            -- not yet: the next moment a policy could apply (least() skips nulls)
            update durable.tasks t
               set cancel_at = case
                       when v_first is not null then v_first + make_interval(secs => v_max_dur)
                       else least(coalesce(t.scheduled_at, t.created_at)
                                      + make_interval(secs => v_max_delay),
                                  p_now + make_interval(secs => v_max_dur))
                   end
             where t.task_id = v_task.task_id;
        end if;
    end loop;
    return v_count;
end $$;

-- Runs for a claim on a queue with partitions or limits: round-robin across partitions (the
-- unpartitioned runs count as one more partition), at most each task name's free capacity.
-- Locks the runs it returns; the caller claims them all.
create function durable.pick_runs(p_queue text, p_qty integer, p_now timestamptz) returns uuid[]
language plpgsql as $$
declare
    v_limit   record;
    v_names   text[] := '{}';
    v_caps    integer[] := '{}';
    v_blocked text[] := '{}';
    v_cap     integer;
    v_parts   text[];
    v_window  integer := greatest(p_qty, 0) * 4 + 16;
    v_per     integer;
    v_cands   uuid[];
    v_locked  uuid[];
    v_picked  uuid[];
begin
    for v_limit in
        select * from durable.limits l where l.queue = p_queue order by l.task_name for update
    loop
        v_cap := p_qty;
        if v_limit.max_running is not null then
            v_cap := least(v_cap, v_limit.max_running - (
                select count(*) from durable.runs r join durable.tasks t on t.task_id = r.task_id
                 where r.queue = p_queue and r.state = 'running'
                   and t.task_name = v_limit.task_name)::integer);
        end if;
        if v_limit.rate_allowed is not null then
            v_cap := least(v_cap, v_limit.rate_allowed - (
                select count(*) from unnest(v_limit.recent_starts) as s(at)
                 where s.at > p_now - make_interval(secs => v_limit.rate_period_s))::integer);
        end if;
        v_cap := greatest(v_cap, 0);
        v_names := v_names || v_limit.task_name;
        v_caps := v_caps || v_cap;
        if v_cap = 0 then
            v_blocked := v_blocked || v_limit.task_name;
        end if;
    end loop;

    -- the partitions with waiting runs (a loose index scan: one probe per partition)
    with recursive parts(pk) as (
        (select r.partition_key from durable.runs r
          where r.queue = p_queue and r.state in ('pending', 'sleeping') and r.partition_key is not null
          order by r.partition_key limit 1)
        union all
        select (select r.partition_key from durable.runs r
                 where r.queue = p_queue and r.state in ('pending', 'sleeping')
                   and r.partition_key > parts.pk
                 order by r.partition_key limit 1)
          from parts where parts.pk is not null
    )
    select array_agg(pk) into v_parts from parts where pk is not null;
    v_per := greatest(2, ceil(v_window::numeric / (coalesce(cardinality(v_parts), 0) + 1))::integer);

    with cands as (
        select c.run_id, c.partition_key, c.rank, c.priority, c.available_at
          from unnest(coalesce(v_parts, '{}')) as p(pk)
         cross join lateral (
              select r.run_id, r.partition_key, r.priority, r.available_at,
                     row_number() over (order by r.priority desc, r.available_at, r.run_id) as rank
                from durable.runs r
               where r.queue = p_queue and r.state in ('pending', 'sleeping')
                 and r.partition_key = p.pk and r.available_at <= p_now
                 and (cardinality(v_blocked) = 0
                      or not exists (select 1 from durable.tasks t
                                      where t.task_id = r.task_id and t.task_name = any(v_blocked)))
               order by r.priority desc, r.available_at, r.run_id
               limit v_per) c
        union all
        select u.run_id, '', row_number() over (order by u.priority desc, u.available_at, u.run_id),
               u.priority, u.available_at
          from (select r.run_id, r.priority, r.available_at from durable.runs r
                 where r.queue = p_queue and r.state in ('pending', 'sleeping')
                   and r.partition_key is null and r.available_at <= p_now
                   and (cardinality(v_blocked) = 0
                        or not exists (select 1 from durable.tasks t
                                        where t.task_id = r.task_id and t.task_name = any(v_blocked)))
                 order by r.priority desc, r.available_at, r.run_id
                 limit v_per) u
    )
    -- round-robin: every partition's first run, then every partition's second, ...; within a
    -- round, the partition served longest ago first
    select array_agg(c.run_id order by c.ord)
      into v_cands
      from (select cands.run_id,
                   row_number() over (order by cands.rank, t.served_at nulls first, cands.priority desc,
                                               cands.available_at, cands.run_id) as ord
              from cands
              left join durable.partition_turns t
                     on t.queue = p_queue and t.partition_key = cands.partition_key
             order by ord
             limit v_window) c;

    select array_agg(x.id order by x.ord) into v_locked
      from (select u.id, u.ord from unnest(coalesce(v_cands, '{}')) with ordinality as u(id, ord)
              join durable.runs r on r.run_id = u.id
             where r.state in ('pending', 'sleeping') and r.available_at <= p_now
               for update of r skip locked) x;

    select array_agg(y.id order by y.ord) into v_picked
      from (select z.id, z.ord from (
                select x.id, x.ord, t.task_name,
                       row_number() over (partition by t.task_name order by x.ord) as n
                  from unnest(coalesce(v_locked, '{}')) with ordinality as x(id, ord)
                  join durable.runs r on r.run_id = x.id
                  join durable.tasks t on t.task_id = r.task_id) z
             where coalesce(z.n <= v_caps[array_position(v_names, z.task_name)], true)
             order by z.ord
             limit greatest(p_qty, 0)) y;

    if cardinality(v_parts) > 0 then
        insert into durable.partition_turns as t (queue, partition_key, served_at)
        select p_queue, coalesce(r.partition_key, ''), p_now
          from durable.runs r where r.run_id = any(coalesce(v_picked, '{}'))
         group by 2 order by 2
        on conflict (queue, partition_key) do update set served_at = excluded.served_at;
    end if;

    -- the starts count against the rate limits
    update durable.limits l
       set recent_starts = array(select s.at from unnest(l.recent_starts) as s(at)
                                  where s.at > p_now - make_interval(secs => l.rate_period_s))
                           || array_fill(p_now, array[c.n])
      from (select t.task_name, count(*)::integer as n
              from unnest(coalesce(v_picked, '{}')) as p(id)
              join durable.runs r on r.run_id = p.id
              join durable.tasks t on t.task_id = r.task_id
             group by t.task_name) c
     where l.queue = p_queue and l.task_name = c.task_name and l.rate_allowed is not null;
    return coalesce(v_picked, '{}');
end $$;

create function durable.unique_key(p_task_name text, p_params jsonb, p_unique jsonb) returns text
language plpgsql immutable as $$
declare
    v_keys  jsonb := p_unique->'keys';
    v_basis jsonb;
begin
    if jsonb_typeof(p_unique) is distinct from 'object' then
        raise exception 'unique must be an object, got %', p_unique using errcode = 'DU005';
    end if;
    if v_keys is null or jsonb_typeof(v_keys) = 'null' then
        v_basis := p_params;
    elsif jsonb_typeof(v_keys) <> 'array' then
        raise exception 'unique.keys must be a list of params keys, got %', v_keys using errcode = 'DU005';
    elsif jsonb_typeof(p_params) <> 'object' then
        raise exception 'unique.keys needs params that are a JSON object' using errcode = 'DU005';
    else
        v_basis := coalesce((select jsonb_object_agg(k, p_params->k)
                               from jsonb_array_elements_text(v_keys) as k
                              where p_params ? k), '{}');
    end if;
    return md5(jsonb_build_array(p_task_name, v_basis)::text);
end $$;

-- A duplicate spawn found p_task (locked): apply unique.replace and unique.debounce to it while
-- it has not started, and answer with it.
create function durable.apply_duplicate(p_task durable.tasks, p_params jsonb, p_options jsonb,
                                        p_now timestamptz)
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_unique   jsonb := p_options->'unique';
    v_run      durable.runs;
    v_field    text;
    v_debounce double precision := durable.seconds(v_unique->'debounce', 'unique.debounce');
begin
    select * into v_run from durable.runs r
     where r.task_id = p_task.task_id and r.state in ('pending', 'running', 'sleeping') for update;
    -- only a task that has never started: a retry's or a snooze's pending run has run before
    if found and v_run.state = 'pending'
       and not exists (select 1 from durable.runs r
                        where r.task_id = p_task.task_id and r.started_at is not null) then
        for v_field in select jsonb_array_elements_text(coalesce(v_unique->'replace', '[]')) loop
            case v_field
                when 'params' then
                    update durable.tasks t set params = p_params where t.task_id = p_task.task_id;
                when 'headers' then
                    update durable.tasks t set headers = coalesce(p_options->'headers', '{}')
                     where t.task_id = p_task.task_id;
                when 'tags' then
                    update durable.tasks t set tags = durable.text_list(p_options->'tags', 'tags')
                     where t.task_id = p_task.task_id;
                when 'max_attempts' then
                    update durable.tasks t
                       set max_attempts = coalesce((p_options->>'max_attempts')::integer, 3)
                     where t.task_id = p_task.task_id;
                when 'priority' then
                    update durable.tasks t set priority = coalesce((p_options->>'priority')::integer, 0)
                     where t.task_id = p_task.task_id;
                    update durable.runs r set priority = coalesce((p_options->>'priority')::integer, 0)
                     where r.run_id = v_run.run_id;
                when 'scheduled_at' then
                    update durable.tasks t set scheduled_at = durable.start_time(p_options, p_now)
                     where t.task_id = p_task.task_id;
                    if not exists (select 1 from durable.task_dependencies d
                                    where d.task_id = p_task.task_id) then
                        update durable.runs r set available_at = durable.start_time(p_options, p_now)
                         where r.run_id = v_run.run_id;
                    end if;
                else
                    raise exception 'unique.replace: unknown field %', quote_literal(v_field)
                        using errcode = 'DU005';
            end case;
        end loop;
        if v_debounce is not null then
            update durable.tasks t
               set scheduled_at = greatest(coalesce(t.scheduled_at, p_now),
                                           p_now + make_interval(secs => v_debounce))
             where t.task_id = p_task.task_id;
            update durable.runs r
               set available_at = greatest(r.available_at, p_now + make_interval(secs => v_debounce))
             where r.run_id = v_run.run_id;
        end if;
        -- a start moved later moves the moment a max_delay policy applies with it
        update durable.tasks t
           set cancel_at = durable.first_cancel_at(t.cancellation, t.scheduled_at)
         where t.task_id = p_task.task_id and t.cancellation is not null;
    end if;
    return query
        select p_task.task_id, r.run_id, p_task.attempt, false
          from (select r.run_id from durable.runs r where r.task_id = p_task.task_id
                 order by r.created_at desc, r.run_id desc limit 1) r;
end $$;

-- ---------------------------------------------------------------------------------------------
-- the protocol, revised

create or replace function durable.spawn(p_queue text, p_task_name text, p_params jsonb,
                                         p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now      timestamptz := durable.now();
    v_options  jsonb := coalesce(p_options, '{}');
    v_key      text := v_options->>'idempotency_key';
    v_unique   jsonb := v_options->'unique';
    v_ukey     text;
    v_states   text[];
    v_period   double precision;
    v_existing durable.tasks;
    v_task     durable.tasks;
    v_at       timestamptz;
    v_deps     uuid[];
    v_open     uuid[];
    v_broken   uuid;
    v_bstate   text;
    v_missing  uuid;
    v_run_id   uuid;
begin
    perform durable.check_queue(p_queue);
    if p_task_name is null or length(p_task_name) = 0 or length(p_task_name) > 255 then
        raise exception 'task name must be 1 to 255 characters' using errcode = 'DU005';
    end if;
    if p_params is null then
        p_params := 'null'::jsonb;
    end if;
    v_at := durable.start_time(v_options, v_now);

    if v_unique is not null and jsonb_typeof(v_unique) <> 'null' then
        v_ukey := durable.unique_key(p_task_name, p_params, v_unique);
        v_period := durable.seconds(v_unique->'period', 'unique.period');
        v_states := coalesce(durable.text_list(v_unique->'states', 'unique.states'), '{}');
        if cardinality(v_states) = 0 then
            v_states := array['pending', 'running', 'sleeping', 'completed'];
        elsif not v_states <@ array['pending', 'running', 'sleeping', 'completed', 'failed',
                                    'cancelled'] then
            raise exception 'unique.states must be task states, got %', v_states using errcode = 'DU005';
        end if;
        perform pg_advisory_xact_lock(hashtextextended('durable.unique:' || p_queue || ':' || v_ukey, 0));
        select t.* into v_existing from durable.tasks t
         where t.queue = p_queue and t.unique_key = v_ukey
           and (v_period is null or t.created_at >= v_now - make_interval(secs => v_period))
           and durable.live_state(t) = any(v_states)
         order by t.created_at desc
         limit 1
           for no key update;
        if found then
            return query select * from durable.apply_duplicate(v_existing, p_params, v_options, v_now);
            return;
        end if;
        if v_unique ? 'debounce' and not (v_options ? 'at' or v_options ? 'delay') then
            v_at := v_now + make_interval(secs => coalesce(
                durable.seconds(v_unique->'debounce', 'unique.debounce'), 0));
        end if;
    end if;

    if v_options ? 'depends_on' and jsonb_typeof(v_options->'depends_on') <> 'null' then
        if jsonb_typeof(v_options->'depends_on') <> 'array' then
            raise exception 'depends_on must be a list of task ids' using errcode = 'DU005';
        end if;
        v_deps := array(select distinct (e #>> '{}')::uuid
                          from jsonb_array_elements(v_options->'depends_on') as e);
        -- the dependencies cannot end while this spawn decides
        perform 1 from durable.tasks t where t.task_id = any(v_deps) order by t.task_id for share;
        select d.id into v_missing from unnest(v_deps) as d(id)
         where not exists (select 1 from durable.tasks t where t.task_id = d.id) limit 1;
        if found then
            raise exception 'depends_on names no task: %', v_missing using errcode = 'DU005';
        end if;
        v_open := array(select t.task_id from durable.tasks t
                         where t.task_id = any(v_deps) and t.state = 'pending');
        select t.task_id, t.state into v_broken, v_bstate from durable.tasks t
         where t.task_id = any(v_deps) and t.state in ('failed', 'cancelled')
         order by t.task_id limit 1;
    end if;

    insert into durable.tasks as t (task_id, queue, task_name, params, headers, max_attempts, retry,
                                    timeout_s, heartbeat_timeout_s, priority, idempotency_key,
                                    created_at, tags, partition_key, parent_task_id, depends_on,
                                    unique_key, cancellation, scheduled_at, cancel_at, discard_hook)
    values (durable.uuidv7(), p_queue, p_task_name, p_params, coalesce(v_options->'headers', '{}'),
            coalesce((v_options->>'max_attempts')::integer, 3), v_options->'retry',
            durable.seconds(v_options->'timeout', 'timeout'),
            durable.seconds(v_options->'heartbeat_timeout', 'heartbeat_timeout'),
            coalesce((v_options->>'priority')::integer, 0), v_key, v_now,
            durable.text_list(v_options->'tags', 'tags'), nullif(v_options->>'partition_key', ''),
            (v_options->>'parent_task_id')::uuid, v_deps, v_ukey,
            nullif(v_options->'cancellation', 'null'), v_at,
            durable.first_cancel_at(nullif(v_options->'cancellation', 'null'), v_at),
            coalesce((v_options->>'on_discard')::boolean, false))
    on conflict (queue, idempotency_key) where idempotency_key is not null do nothing
    returning * into v_task;
    if not found then
        return query
            select t.task_id, r.run_id, t.attempt, false
              from durable.tasks t
              left join lateral (select r.run_id from durable.runs r where r.task_id = t.task_id
                                  order by r.created_at desc, r.run_id desc limit 1) r on true
             where t.queue = p_queue and t.idempotency_key = v_key;
        return;
    end if;
    if cardinality(v_open) > 0 and v_broken is null then
        insert into durable.task_dependencies (task_id, depends_on)
        select v_task.task_id, d from unnest(v_open) as d;
        v_run_id := durable.insert_run(v_task, 1, 'pending', 'infinity', v_now);
    else
        v_run_id := durable.insert_run(v_task, 1, 'pending', v_at, v_now);
    end if;
    if v_broken is not null then
        perform durable.cancel_locked_task(
            v_task,
            jsonb_build_object('type', 'DependencyFailed',
                               'message', format('dependency %s ended %s', v_broken, v_bstate),
                               'dependency', v_broken),
            v_now);
    end if;
    return query select v_task.task_id, v_run_id, 1, true;
end $$;

-- spawn_many: items with unique or depends_on go through spawn() one by one; the rest in bulk.
create or replace function durable.spawn_many(p_queue text, p_items jsonb)
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now     timestamptz := durable.now();
    v_ms      bigint := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    v_ids     uuid[];
    v_runs    uuid[];
    v_keys    text[];
    v_created boolean[];
    v_ready   integer;
begin
    perform durable.check_queue(p_queue);
    if jsonb_typeof(p_items) is distinct from 'array' then
        raise exception 'items must be a JSON array' using errcode = 'DU005';
    end if;
    if exists (select 1 from jsonb_array_elements(p_items) i
                where coalesce(length(i->>'task_name'), 0) not between 1 and 255) then
        raise exception 'task name must be 1 to 255 characters' using errcode = 'DU005';
    end if;
    if exists (select 1 from jsonb_array_elements(p_items) i
                where i->'options' ? 'unique' or i->'options' ? 'depends_on') then
        return query
            select s.* from jsonb_array_elements(p_items) with ordinality as x(i, ord)
             cross join lateral durable.spawn(p_queue, x.i->>'task_name', x.i->'params',
                                              coalesce(x.i->'options', '{}')) s
             order by x.ord;
        return;
    end if;
    with items as materialized (
        select x.ord, x.i->>'task_name' as task_name, coalesce(x.i->'params', 'null') as params,
               coalesce(x.i->'options', '{}') as o, durable.uuidv7_seq(v_ms, x.ord) as new_id,
               durable.uuidv7_seq(v_ms, x.ord) as new_run
          from jsonb_array_elements(p_items) with ordinality as x(i, ord)
    ), prepared as (
        select i.*, i.o->>'idempotency_key' as key, coalesce((i.o->>'priority')::integer, 0) as prio,
               durable.start_time(i.o, v_now) as available_at,
               nullif(i.o->'cancellation', 'null') as cancellation
          from items i
    ), ins as (
        insert into durable.tasks (task_id, queue, task_name, params, headers, max_attempts, retry,
                                   timeout_s, heartbeat_timeout_s, priority, idempotency_key,
                                   created_at, tags, partition_key, parent_task_id, cancellation,
                                   scheduled_at, cancel_at, discard_hook)
        select p.new_id, p_queue, p.task_name, p.params, coalesce(p.o->'headers', '{}'),
               coalesce((p.o->>'max_attempts')::integer, 3), p.o->'retry',
               durable.seconds(p.o->'timeout', 'timeout'),
               durable.seconds(p.o->'heartbeat_timeout', 'heartbeat_timeout'), p.prio, p.key, v_now,
               case when p.o ? 'tags' then durable.text_list(p.o->'tags', 'tags') else '{}' end,
               nullif(p.o->>'partition_key', ''), (p.o->>'parent_task_id')::uuid, p.cancellation,
               p.available_at,
               case when p.cancellation is not null
                    then durable.first_cancel_at(p.cancellation, p.available_at) end,
               coalesce((p.o->>'on_discard')::boolean, false)
          from prepared p order by p.ord
        on conflict (queue, idempotency_key) where idempotency_key is not null do nothing
        returning task_id
    ), rins as (
        insert into durable.runs (run_id, task_id, queue, attempt, priority, partition_key, state,
                                  available_at, created_at)
        select p.new_run, p.new_id, p_queue, 1, p.prio, nullif(p.o->>'partition_key', ''), 'pending',
               p.available_at, v_now
          from prepared p join ins on ins.task_id = p.new_id
        returning available_at
    )
    select array_agg(p.new_id order by p.ord), array_agg(p.new_run order by p.ord),
           array_agg(p.key order by p.ord), array_agg(ins.task_id is not null order by p.ord),
           (select count(*) from rins where rins.available_at <= v_now)
      into v_ids, v_runs, v_keys, v_created, v_ready
      from prepared p left join ins on ins.task_id = p.new_id;
    if v_ready > 0 then
        perform pg_notify('durable_work', p_queue);
    end if;
    return query
        select case when u.c then u.id else t.task_id end,
               case when u.c then u.rid else r.run_id end,
               case when u.c then 1 else t.attempt end,
               u.c
          from unnest(v_ids, v_runs, v_keys, v_created) with ordinality as u(id, rid, key, c, ord)
          left join durable.tasks t on not u.c and t.queue = p_queue and t.idempotency_key = u.key
          left join lateral (select r.run_id from durable.runs r where r.task_id = t.task_id
                              order by r.created_at desc, r.run_id desc limit 1) r on not u.c
         order by u.ord;
end $$;

create or replace function durable.claim(p_queue text, p_worker_id text,
                                         p_claim_timeout double precision, p_qty integer default 1)
returns table (run_id uuid, task_id uuid, task_name text, params jsonb, headers jsonb,
               attempt integer, max_attempts integer, timeout_s double precision,
               heartbeat_timeout_s double precision, lease_expires_at timestamptz,
               has_checkpoints boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now    timestamptz := durable.now();
    v_lease  timestamptz;
    v_picked uuid[];
begin
    perform durable.check_queue(p_queue);
    if p_claim_timeout is null or p_claim_timeout <= 0 then
        raise exception 'claim_timeout must be positive' using errcode = 'DU005';
    end if;
    if p_worker_id is null or length(p_worker_id) = 0 then
        raise exception 'worker_id must not be empty' using errcode = 'DU005';
    end if;
    v_lease := v_now + make_interval(secs => p_claim_timeout);
    perform durable.reap_runs(p_queue, v_now);
    perform durable.enforce_cancellations(v_now);
    if exists (select 1 from durable.limits l where l.queue = p_queue)
       or exists (select 1 from durable.runs r
                   where r.queue = p_queue and r.state in ('pending', 'sleeping')
                     and r.partition_key is not null) then
        v_picked := durable.pick_runs(p_queue, p_qty, v_now);
        return query
        with claimed as (
            update durable.runs r
               set state = 'running', claimed_by = p_worker_id, started_at = v_now,
                   lease_s = p_claim_timeout, lease_expires_at = v_lease
             where r.run_id = any(v_picked)
            returning r.run_id, r.task_id, r.attempt
        )
        select c.run_id, t.task_id, t.task_name, t.params, t.headers, c.attempt, t.max_attempts,
               t.timeout_s, t.heartbeat_timeout_s, v_lease,
               exists (select 1 from durable.checkpoints k where k.task_id = t.task_id)
          from claimed c join durable.tasks t on t.task_id = c.task_id
         order by t.priority desc, c.run_id;
    else
        return query
        with picked as (
            select r.run_id from durable.runs r
             where r.queue = p_queue and r.state in ('pending', 'sleeping') and r.available_at <= v_now
             order by r.priority desc, r.available_at, r.run_id
             limit greatest(p_qty, 0)
             for update skip locked
        ), claimed as (
            update durable.runs r
               set state = 'running', claimed_by = p_worker_id, started_at = v_now,
                   lease_s = p_claim_timeout, lease_expires_at = v_lease
              from picked where r.run_id = picked.run_id
            returning r.run_id, r.task_id, r.attempt
        )
        select c.run_id, t.task_id, t.task_name, t.params, t.headers, c.attempt, t.max_attempts,
               t.timeout_s, t.heartbeat_timeout_s, v_lease,
               exists (select 1 from durable.checkpoints k where k.task_id = t.task_id)
          from claimed c join durable.tasks t on t.task_id = c.task_id
         order by t.priority desc, c.run_id;
    end if;
    if found then
        insert into durable.workers as w (worker_id, started_at, last_seen_at, expires_at)
        values (p_worker_id, v_now, v_now, v_lease)
        on conflict (worker_id) do update
            set last_seen_at = v_now, expires_at = greatest(w.expires_at, v_lease), stopped_at = null;
    end if;
end $$;

create or replace function durable.complete(p_queue text, p_run_id uuid, p_result jsonb default null)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
    v_run durable.runs;
begin
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    update durable.runs set state = 'completed', finished_at = v_now where run_id = p_run_id;
    update durable.tasks set state = 'completed', result = coalesce(p_result, 'null'),
                             finished_at = v_now
     where task_id = v_run.task_id;
    perform pg_notify('durable_done', v_run.task_id::text);
    perform durable.on_tasks_ended(array[v_run.task_id], v_now);
end $$;

create or replace function durable.complete_runs(p_queue text, p_run_ids uuid[], p_results jsonb[])
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
    -- one notification per 200 tasks (a payload holds up to 8000 bytes), not one per task
    perform pg_notify('durable_done', string_agg(u.id::text, ',' order by u.n))
       from unnest(v_tasks) with ordinality as u(id, n)
      group by (u.n - 1) / 200;
    perform durable.on_tasks_ended(v_tasks, v_now);
    return query
        select u.id, u.id = any(coalesce(v_done, '{}')) from unnest(p_run_ids) as u(id);
end $$;

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
-- A retried task's cancellation policy no longer applies (the operator chose to run it).
create or replace function durable.retry(p_queue text, p_task_id uuid, p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now     timestamptz := durable.now();
    v_task    durable.tasks;
    v_options jsonb := coalesce(p_options, '{}');
    v_attempt integer;
    v_run_id  uuid;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    if v_task.state not in ('failed', 'cancelled') then
        raise exception 'task % is % — only failed or cancelled tasks can be retried',
            p_task_id, durable.live_state(v_task) using errcode = 'DU003', detail = v_task.state;
    end if;
    v_attempt := v_task.attempt + 1;
    update durable.tasks t
       set state = 'pending', attempt = v_attempt, finished_at = null, result = null,
           max_attempts = greatest(coalesce((v_options->>'max_attempts')::integer, t.max_attempts), v_attempt),
           retry = coalesce(v_options->'retry', t.retry),
           timeout_s = coalesce(durable.seconds(v_options->'timeout', 'timeout'), t.timeout_s),
           heartbeat_timeout_s = coalesce(durable.seconds(v_options->'heartbeat_timeout', 'heartbeat_timeout'),
                                          t.heartbeat_timeout_s),
           priority = coalesce((v_options->>'priority')::integer, t.priority),
           cancel_at = null
     where t.task_id = p_task_id
    returning * into v_task;
    v_run_id := durable.insert_run(v_task, v_attempt, 'pending',
                                   durable.start_time(v_options, v_now), v_now);
    return query select p_task_id, v_run_id, v_attempt, false;
end $$;

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
    -- a running task past its max_duration is cancelled here even when nobody claims
    perform durable.enforce_cancellations(v_now);
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

create or replace function durable.get_task(p_queue text, p_task_id uuid) returns jsonb
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_task durable.tasks;
begin
    select * into v_task from durable.tasks t
     where t.task_id = p_task_id and (p_queue is null or t.queue = p_queue);
    if not found then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return to_jsonb(v_task) || jsonb_build_object(
        'state', durable.live_state(v_task),
        'runs', coalesce((select jsonb_agg(to_jsonb(r) order by r.created_at, r.run_id)
                            from durable.runs r where r.task_id = p_task_id), '[]'),
        'waiting_for', coalesce((select jsonb_agg(jsonb_build_object(
                                            'step_name', w.step_name, 'event_name', w.event_name,
                                            'child_task_id', w.child_task_id,
                                            'timeout_at', w.timeout_at) order by w.created_at)
                                   from durable.waits w where w.task_id = p_task_id), '[]'),
        'pending_dependencies', coalesce((select jsonb_agg(d.depends_on order by d.depends_on)
                                            from durable.task_dependencies d
                                           where d.task_id = p_task_id), '[]'));
end $$;

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
    ), gone_waits as (
        delete from durable.waits w using gone where w.task_id = gone.task_id
    ), gone_edges as (
        delete from durable.task_dependencies d using gone where d.task_id = gone.task_id
    )
    select count(*) into v_count from gone;
    return v_count;
end $$;

-- Operator views, with a tag filter.
drop function durable.queue_counts();
create function durable.queue_counts(p_tags text[] default null)
returns table (queue text, state text, count bigint)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select t.queue, coalesce(r.state, t.state) as state, count(*)
      from durable.tasks t
      left join durable.runs r on t.state = 'pending' and r.task_id = t.task_id
                              and r.state in ('pending', 'running', 'sleeping')
     where p_tags is null or t.tags @> p_tags
     group by 1, 2
     order by 1, 2
$$;

drop function durable.list_failed_runs(text, integer);
create function durable.list_failed_runs(p_queue text, p_limit integer, p_tags text[] default null)
returns table (task_id uuid, run_id uuid, queue text, task_name text, task_state text,
               attempt integer, max_attempts integer, failure_reason text, error jsonb,
               finished_at timestamptz)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select t.task_id, r.run_id, r.queue, t.task_name, durable.live_state(t), r.attempt,
           t.max_attempts, r.failure_reason, r.error, r.finished_at
      from durable.runs r join durable.tasks t on t.task_id = r.task_id
     where r.state = 'failed' and (p_queue is null or r.queue = p_queue)
       and (p_tags is null or t.tags @> p_tags)
     order by r.finished_at desc
     limit p_limit
$$;

-- ---------------------------------------------------------------------------------------------
-- the protocol, new

-- Durable sleep, step p_step of the run: the first call records the wake-up time (now +
-- p_seconds, or p_until) as the step's checkpoint and parks the run until then. Returns true when
-- the run was parked (the caller stops), false when the time has already come.
create function durable.sleep(p_queue text, p_run_id uuid, p_step text,
                              p_seconds double precision, p_until timestamptz)
returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now  timestamptz := durable.now();
    v_run  durable.runs;
    v_wake timestamptz;
begin
    if p_step is null or length(p_step) = 0 then
        raise exception 'step name must not be empty' using errcode = 'DU005';
    end if;
    if (p_seconds is null) = (p_until is null) then
        raise exception 'give seconds or until, not both' using errcode = 'DU005';
    end if;
    if p_seconds < 0 then
        raise exception 'sleep seconds must be non-negative, got %', p_seconds using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    select (k.value->>'wake_at')::timestamptz into v_wake from durable.checkpoints k
     where k.task_id = v_run.task_id and k.step_name = p_step;
    if not found then
        v_wake := coalesce(p_until, v_now + make_interval(secs => p_seconds));
        perform durable.record_step(v_run.task_id, p_step, jsonb_build_object('wake_at', v_wake),
                                    p_run_id, v_now);
    end if;
    if v_wake <= v_now then
        return false;
    end if;
    perform durable.suspend_run(v_run, v_wake, v_now);
    return true;
end $$;

-- The wait of step p_step of the live run p_run (locked) for event p_event or task p_child,
-- recorded on the first call with its timeout: 'timeout' (recorded as the step's checkpoint)
-- once the timeout passed, else 'suspended' (the run parked until the wait's timeout).
create function durable.park_on_wait(p_run durable.runs, p_step text, p_event text, p_child uuid,
                                     p_timeout double precision, p_now timestamptz)
returns text
language plpgsql as $$
declare
    v_wait durable.waits;
    v_next uuid;
begin
    select * into v_wait from durable.waits w
     where w.task_id = p_run.task_id and w.step_name = p_step;
    if not found then
        insert into durable.waits (task_id, step_name, run_id, event_name, child_task_id,
                                   timeout_at, created_at)
        values (p_run.task_id, p_step, p_run.run_id, p_event, p_child,
                p_now + make_interval(secs => p_timeout), p_now)
        returning * into v_wait;
    end if;
    if v_wait.timeout_at <= p_now then
        perform durable.record_step(p_run.task_id, p_step, '{"timed_out": true}', p_run.run_id, p_now);
        delete from durable.waits w where w.task_id = p_run.task_id and w.step_name = p_step;
        return 'timeout';
    end if;
    v_next := durable.suspend_run(p_run, coalesce(v_wait.timeout_at, 'infinity'), p_now);
    update durable.waits w set run_id = v_next
     where w.task_id = p_run.task_id and w.step_name = p_step;
    return 'suspended';
end $$;

-- Wait for event p_event, as step p_step of the run. status: 'received' (payload), 'timeout'
-- (the wait's timeout passed: recorded, so a replay times out too) or 'suspended' (parked until
-- the event or the timeout).
create function durable.await_event(p_queue text, p_run_id uuid, p_step text, p_event text,
                                    p_timeout double precision)
returns table (status text, payload jsonb)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now   timestamptz := durable.now();
    v_run   durable.runs;
    v_value jsonb;
    v_event durable.events;
begin
    if p_step is null or length(p_step) = 0 or p_event is null or length(p_event) = 0 then
        raise exception 'step and event names must not be empty' using errcode = 'DU005';
    end if;
    if p_timeout < 0 then
        raise exception 'timeout must be non-negative, got %', p_timeout using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    perform pg_advisory_xact_lock(hashtextextended('durable.event:' || p_event, 0));
    select k.value into v_value from durable.checkpoints k
     where k.task_id = v_run.task_id and k.step_name = p_step;
    if found then
        return query select case when v_value ? 'timed_out' then 'timeout' else 'received' end,
                            v_value->'payload';
        return;
    end if;
    select * into v_event from durable.events e where e.name = p_event;
    if found then
        perform durable.record_step(v_run.task_id, p_step,
                                    jsonb_build_object('payload', v_event.payload), p_run_id, v_now);
        delete from durable.waits w where w.task_id = v_run.task_id and w.step_name = p_step;
        return query select 'received'::text, v_event.payload;
        return;
    end if;
    return query select durable.park_on_wait(v_run, p_step, p_event, null, p_timeout, v_now),
                        null::jsonb;
end $$;

-- Emit event p_name: stored (a later wait receives it at once; a second emit replaces the
-- payload) and delivered to every task waiting for it now. Returns how many were woken.
create function durable.emit_event(p_name text, p_payload jsonb default null) returns integer
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now   timestamptz := durable.now();
    v_wait  durable.waits;
    v_count integer := 0;
begin
    if p_name is null or length(p_name) = 0 or length(p_name) > 255 then
        raise exception 'event name must be 1 to 255 characters' using errcode = 'DU005';
    end if;
    perform pg_advisory_xact_lock(hashtextextended('durable.event:' || p_name, 0));
    insert into durable.events as e (name, payload, emitted_at)
    values (p_name, coalesce(p_payload, 'null'), v_now)
    on conflict (name) do update set payload = excluded.payload, emitted_at = excluded.emitted_at;
    perform 1 from durable.tasks t
     where t.task_id in (select w.task_id from durable.waits w where w.event_name = p_name)
     order by t.task_id
       for no key update;
    for v_wait in
        delete from durable.waits w where w.event_name = p_name returning *
    loop
        perform durable.record_step(v_wait.task_id, v_wait.step_name,
                                    jsonb_build_object('payload', coalesce(p_payload, 'null')),
                                    v_wait.run_id, v_now);
        perform durable.wake(v_wait.run_id, v_now);
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

-- Wait for task p_child to end, as step p_step of the run: status 'done' with the outcome
-- {state, result, failure}, 'timeout', or 'suspended' (parked until the child ends).
create function durable.await_task(p_queue text, p_run_id uuid, p_step text, p_child uuid,
                                   p_timeout double precision)
returns table (status text, outcome jsonb)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now   timestamptz := durable.now();
    v_run   durable.runs;
    v_value jsonb;
    v_child durable.tasks;
begin
    if p_step is null or length(p_step) = 0 then
        raise exception 'step name must not be empty' using errcode = 'DU005';
    end if;
    if p_timeout < 0 then
        raise exception 'timeout must be non-negative, got %', p_timeout using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    select k.value into v_value from durable.checkpoints k
     where k.task_id = v_run.task_id and k.step_name = p_step;
    if found then
        return query select case when v_value ? 'timed_out' then 'timeout' else 'done' end, v_value;
        return;
    end if;
    -- the child's end (which locks its row) either happened or sees this wait
    select * into v_child from durable.tasks t where t.task_id = p_child for share;
    if not found then
        raise exception 'no task %', p_child using errcode = 'DU002';
    end if;
    if v_child.state <> 'pending' then
        v_value := jsonb_build_object('state', v_child.state, 'result', v_child.result,
                                      'failure', v_child.failure);
        perform durable.record_step(v_run.task_id, p_step, v_value, p_run_id, v_now);
        delete from durable.waits w where w.task_id = v_run.task_id and w.step_name = p_step;
        return query select 'done'::text, v_value;
        return;
    end if;
    return query select durable.park_on_wait(v_run, p_step, null, p_child, p_timeout, v_now),
                        null::jsonb;
end $$;

-- Record a running task's progress (0 to 100, and any JSON detail); fenced like every write of
-- a run, and extends its lease like a heartbeat.
create function durable.set_progress(p_queue text, p_run_id uuid, p_pct double precision,
                                     p_detail jsonb default null)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
    v_run durable.runs;
begin
    if p_pct is null or p_pct < 0 or p_pct > 100 or p_pct = 'NaN'::double precision then
        raise exception 'progress must be between 0 and 100, got %', p_pct using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    update durable.runs
       set lease_expires_at = greatest(lease_expires_at, v_now + make_interval(secs => lease_s))
     where run_id = p_run_id;
    update durable.tasks
       set progress = jsonb_build_object('pct', p_pct, 'detail', p_detail, 'at', v_now,
                                         'run_id', p_run_id)
     where task_id = v_run.task_id;
end $$;

-- Cancel every live task matching all the given filters (at least one). Returns how many.
create function durable.cancel_by(p_queue text, p_task_name text, p_tags text[])
returns integer
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now   timestamptz := durable.now();
    v_task  durable.tasks;
    v_count integer := 0;
begin
    if p_queue is null and p_task_name is null and coalesce(cardinality(p_tags), 0) = 0 then
        raise exception 'cancel_by needs a queue, a task name or tags' using errcode = 'DU005';
    end if;
    for v_task in
        select * from durable.tasks t
         where t.state = 'pending'
           and (p_queue is null or t.queue = p_queue)
           and (p_task_name is null or t.task_name = p_task_name)
           and (coalesce(cardinality(p_tags), 0) = 0 or t.tags @> p_tags)
         order by t.task_id
           for no key update skip locked
    loop
        -- a dependent cancelled by an earlier one of this loop has ended already
        continue when (select t.state from durable.tasks t where t.task_id = v_task.task_id) <> 'pending';
        perform durable.cancel_locked_task(
            v_task, jsonb_build_object('type', 'CancelledByFilter',
                                       'message', 'cancelled by cancel_by'), v_now);
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

-- Set (or, with every limit null, remove) the cluster-wide limits of a task name on a queue.
create function durable.set_limit(p_queue text, p_task_name text, p_max_running integer,
                                  p_rate_allowed integer, p_rate_period double precision)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
begin
    perform durable.check_queue(p_queue);
    if (p_rate_allowed is null) <> (p_rate_period is null) then
        raise exception 'a rate limit needs both a count and a period' using errcode = 'DU005';
    end if;
    if p_max_running < 1 or p_rate_allowed < 1 or p_rate_period <= 0 then
        raise exception 'limits must be positive' using errcode = 'DU005';
    end if;
    if p_max_running is null and p_rate_allowed is null then
        delete from durable.limits l where l.queue = p_queue and l.task_name = p_task_name;
        return;
    end if;
    insert into durable.limits as l (queue, task_name, max_running, rate_allowed, rate_period_s)
    values (p_queue, p_task_name, p_max_running, p_rate_allowed, p_rate_period)
    on conflict (queue, task_name) do update
        set max_running = excluded.max_running, rate_allowed = excluded.rate_allowed,
            rate_period_s = excluded.rate_period_s
     where (l.max_running, l.rate_allowed, l.rate_period_s)
           is distinct from (excluded.max_running, excluded.rate_allowed, excluded.rate_period_s);
end $$;

revoke execute on all functions in schema durable from public;
select durable.grant_worker_privileges();
