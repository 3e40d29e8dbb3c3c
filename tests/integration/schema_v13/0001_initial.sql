-- durable: durable tasks on PostgreSQL. This file is the model; read it first.
--
-- A TASK is a unit of work: (queue, task_name, params, headers, options, idempotency_key).
-- A RUN is one attempt at a task. A task has at most one live run (pending, running or sleeping);
-- the partial unique index runs_one_live enforces it. Anything that makes a task claimable again
-- (retry, reap, release, defer) ends the old run and inserts a new one, so a run_id is claimed at
-- most once and the run_id is the LEASE TOKEN: every write by a worker names its run_id and is
-- refused with SQLSTATE DU001 (lease lost) unless that run is still running and its lease has not
-- expired. A stale worker can never overwrite newer state.
--
-- A CHECKPOINT (task_id, step_name) -> value is written only by the lease holder; the write extends
-- the lease. A later attempt reads checkpoints back and skips the finished steps.
--
-- A WORKER registers its liveness (workers.expires_at), renewed by its heartbeat. claim() first
-- reaps runs whose lease lapsed: reason 'crash' when the worker's liveness lapsed too (or it is
-- unknown or stopped), 'heartbeat_timeout' when the worker was seen alive after the lease lapsed
-- (a blocked event loop, a stuck handler). Until one of the two is known, the run waits.
--
-- Failure reasons: errored, job_timeout, heartbeat_timeout, crash, cancelled.
-- A failed run spends an attempt; the next run is scheduled by the task's retry strategy
-- (durable.next_delay) or the task ends 'failed' when attempts are exhausted.
--
-- Lock order, everywhere: the task row (FOR NO KEY UPDATE) before its run rows. claim() locks runs
-- only (SKIP LOCKED) and never the task, so claims never wait on operators.
--
-- Time is the database's: durable.now() is clock_timestamp(), or the setting durable.fake_now
-- when a session sets it (tests move leases and timeouts without waiting).
--
-- Errors: DU001 lease lost, DU002 task not found, DU003 invalid state, DU004 invalid queue name,
-- DU005 invalid argument.
--
-- Notifications: channel durable_work (payload: queue) when a run becomes claimable now;
-- channel durable_done (payload: task_id) when a task ends.

create schema if not exists durable;

create function durable.now() returns timestamptz
language sql volatile as $$
    select coalesce(nullif(current_setting('durable.fake_now', true), '')::timestamptz,
                    clock_timestamp())
$$;

-- UUIDv7 (RFC 9562): 48-bit unix milliseconds, version 7, random rest. Time-ordered keys.
create function durable.uuidv7() returns uuid
language sql volatile as $$
    select encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                    from 1 for 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

create table durable.tasks (
    task_id             uuid primary key,
    queue               text not null,
    task_name           text not null,
    params              jsonb not null,
    headers             jsonb not null default '{}',
    -- pending covers a live task whatever its run is doing; the run's state refines it
    state               text not null default 'pending'
                        check (state in ('pending', 'completed', 'failed', 'cancelled')),
    attempt             integer not null default 1,
    max_attempts        integer not null default 3 check (max_attempts >= 1),
    retry               jsonb,
    timeout_s           double precision,
    heartbeat_timeout_s double precision,
    priority            integer not null default 0,
    idempotency_key     text,
    created_at          timestamptz not null,
    finished_at         timestamptz,
    result              jsonb,
    failure             jsonb
);
create unique index tasks_idempotency_key on durable.tasks (queue, idempotency_key)
    where idempotency_key is not null;
create index tasks_queue_state on durable.tasks (queue, state);

create table durable.runs (
    run_id           uuid primary key,
    task_id          uuid not null references durable.tasks on delete cascade,
    queue            text not null,
    attempt          integer not null,
    priority         integer not null default 0,
    state            text not null check (state in ('pending', 'running', 'sleeping', 'completed',
                                                    'failed', 'cancelled', 'released')),
    available_at     timestamptz not null,
    claimed_by       text,
    lease_s          double precision,
    lease_expires_at timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    failure_reason   text check (failure_reason in ('errored', 'job_timeout', 'heartbeat_timeout',
                                                    'crash', 'cancelled')),
    error            jsonb,
    created_at       timestamptz not null
);
create index runs_claim on durable.runs (queue, priority desc, available_at, run_id)
    where state = 'pending';
create index runs_lease on durable.runs (queue, lease_expires_at) where state = 'running';
create index runs_task on durable.runs (task_id);
create unique index runs_one_live on durable.runs (task_id)
    where state in ('pending', 'running', 'sleeping');
create index runs_failed on durable.runs (finished_at desc) where state = 'failed';

create table durable.checkpoints (
    task_id    uuid not null references durable.tasks on delete cascade,
    step_name  text not null,
    value      jsonb,
    run_id     uuid not null,
    created_at timestamptz not null,
    primary key (task_id, step_name)
);

create table durable.workers (
    worker_id    text primary key,
    host         text,
    pid          integer,
    queues       text[] not null default '{}',
    started_at   timestamptz not null,
    last_seen_at timestamptz not null,
    expires_at   timestamptz not null,
    stopped_at   timestamptz
);

-- ---------------------------------------------------------------------------------------------
-- internal helpers

create function durable.check_queue(p_queue text) returns void
language plpgsql immutable as $$
begin
    if p_queue is null or p_queue !~ '^[a-z][a-z0-9_]{0,47}$' then
        raise exception 'invalid queue name: %', coalesce(quote_literal(p_queue), 'NULL')
            using errcode = 'DU004';
    end if;
end $$;

create function durable.seconds(p_value jsonb, p_what text) returns double precision
language plpgsql immutable as $$
declare
    v double precision;
begin
    if p_value is null or jsonb_typeof(p_value) = 'null' then
        return null;
    end if;
    if jsonb_typeof(p_value) <> 'number' or (p_value #>> '{}')::double precision < 0 then
        raise exception '% must be a non-negative number of seconds, got %', p_what, p_value
            using errcode = 'DU005';
    end if;
    v := (p_value #>> '{}')::double precision;
    return v;
end $$;

-- Seconds to wait after failed attempt p_attempt, per the task's retry strategy.
create function durable.next_delay(p_retry jsonb, p_attempt integer) returns double precision
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

create function durable.raise_lease_lost(p_run_id uuid, p_detail text) returns void
language plpgsql as $$
begin
    raise exception 'lease lost for run %', p_run_id using errcode = 'DU001', detail = p_detail;
end $$;

-- Lock the run p_run_id (after its task) and check it is the task's live, unexpired run.
create function durable.lock_live_run(p_queue text, p_run_id uuid, p_now timestamptz)
returns durable.runs
language plpgsql as $$
declare
    v_task_id uuid;
    v_run     durable.runs;
begin
    select r.task_id into v_task_id from durable.runs r where r.run_id = p_run_id;
    if not found then
        perform durable.raise_lease_lost(p_run_id, 'no such run');
    end if;
    perform 1 from durable.tasks t where t.task_id = v_task_id for no key update;
    select * into v_run from durable.runs r where r.run_id = p_run_id for update;
    if p_queue is not null and v_run.queue <> p_queue then
        perform durable.raise_lease_lost(p_run_id, 'run is on queue ' || v_run.queue);
    end if;
    if v_run.state <> 'running' then
        perform durable.raise_lease_lost(p_run_id, 'run is ' || v_run.state);
    end if;
    if v_run.lease_expires_at <= p_now then
        perform durable.raise_lease_lost(p_run_id, 'lease expired at ' || v_run.lease_expires_at);
    end if;
    return v_run;
end $$;

-- End a locked, live run as failed (or cancelled) and schedule the next attempt or end the task.
-- The caller holds the task lock. Returns the next run's id, or null when the task ended.
create function durable.fail_locked_run(p_run durable.runs, p_reason text, p_error jsonb,
                                        p_retry_at timestamptz, p_now timestamptz)
returns uuid
language plpgsql as $$
declare
    v_task    durable.tasks;
    v_failure jsonb;
    v_next    uuid;
    v_at      timestamptz;
begin
    update durable.runs
       set state = case when p_reason = 'cancelled' then 'cancelled' else 'failed' end,
           failure_reason = p_reason, error = p_error, finished_at = p_now
     where run_id = p_run.run_id;
    select * into v_task from durable.tasks where task_id = p_run.task_id;
    v_failure := jsonb_build_object('reason', p_reason, 'run_id', p_run.run_id,
                                    'attempt', p_run.attempt, 'error', p_error);
    if p_reason <> 'cancelled' and p_run.attempt < v_task.max_attempts then
        v_next := durable.uuidv7();
        v_at := coalesce(p_retry_at,
                         p_now + make_interval(secs => durable.next_delay(v_task.retry, p_run.attempt)));
        insert into durable.runs (run_id, task_id, queue, attempt, priority, state, available_at,
                                  created_at)
        values (v_next, v_task.task_id, v_task.queue, p_run.attempt + 1, v_task.priority, 'pending',
                v_at, p_now);
        update durable.tasks set attempt = p_run.attempt + 1, failure = v_failure
         where task_id = v_task.task_id;
        if v_at <= p_now then
            perform pg_notify('durable_work', v_task.queue);
        end if;
        return v_next;
    end if;
    update durable.tasks
       set state = case when p_reason = 'cancelled' then 'cancelled' else 'failed' end,
           failure = v_failure, finished_at = p_now
     where task_id = v_task.task_id;
    perform pg_notify('durable_done', v_task.task_id::text);
    return null;
end $$;

-- Reap the runs of p_queue whose lease lapsed. See the header for the reasons.
create function durable.reap_runs(p_queue text, p_now timestamptz) returns integer
language plpgsql as $$
declare
    v_cand   record;
    v_run    durable.runs;
    v_reason text;
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
        perform durable.fail_locked_run(
            v_run, v_reason,
            jsonb_build_object(
                'type', case when v_reason = 'crash' then 'WorkerCrashed' else 'HeartbeatTimeout' end,
                'message', format('lease expired at %s; worker %s %s', v_run.lease_expires_at,
                                  v_run.claimed_by,
                                  case when v_reason = 'crash' then 'is gone'
                                       else 'is alive but stopped renewing the lease' end)),
            null, p_now);
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

create function durable.live_state(p_task durable.tasks) returns text
language sql stable as $$
    select case when p_task.state = 'pending'
                then coalesce((select r.state from durable.runs r
                                where r.task_id = p_task.task_id
                                  and r.state in ('pending', 'running', 'sleeping')), 'pending')
                else p_task.state end
$$;

-- ---------------------------------------------------------------------------------------------
-- the protocol

create function durable.spawn(p_queue text, p_task_name text, p_params jsonb,
                              p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now     timestamptz := durable.now();
    v_options jsonb := coalesce(p_options, '{}');
    v_key     text := v_options->>'idempotency_key';
    v_task_id uuid := durable.uuidv7();
    v_run_id  uuid;
    v_at      timestamptz;
    v_prio    integer := coalesce((v_options->>'priority')::integer, 0);
begin
    perform durable.check_queue(p_queue);
    if p_task_name is null or length(p_task_name) = 0 or length(p_task_name) > 255 then
        raise exception 'task name must be 1 to 255 characters' using errcode = 'DU005';
    end if;
    if p_params is null then
        p_params := 'null'::jsonb;
    end if;
    v_at := case when v_options ? 'at' then (v_options->>'at')::timestamptz
                 else v_now + make_interval(secs => coalesce(durable.seconds(v_options->'delay', 'delay'), 0))
            end;
    insert into durable.tasks as t (task_id, queue, task_name, params, headers, max_attempts, retry,
                                    timeout_s, heartbeat_timeout_s, priority, idempotency_key, created_at)
    values (v_task_id, p_queue, p_task_name, p_params, coalesce(v_options->'headers', '{}'),
            coalesce((v_options->>'max_attempts')::integer, 3), v_options->'retry',
            durable.seconds(v_options->'timeout', 'timeout'),
            durable.seconds(v_options->'heartbeat_timeout', 'heartbeat_timeout'),
            v_prio, v_key, v_now)
    on conflict (queue, idempotency_key) where idempotency_key is not null do nothing;
    if not found then
        return query
            select t.task_id, r.run_id, t.attempt, false
              from durable.tasks t
              left join lateral (select r.run_id from durable.runs r where r.task_id = t.task_id
                                  order by r.created_at desc, r.run_id desc limit 1) r on true
             where t.queue = p_queue and t.idempotency_key = v_key;
        return;
    end if;
    v_run_id := durable.uuidv7();
    insert into durable.runs (run_id, task_id, queue, attempt, priority, state, available_at, created_at)
    values (v_run_id, v_task_id, p_queue, 1, v_prio, 'pending', v_at, v_now);
    if v_at <= v_now then
        perform pg_notify('durable_work', p_queue);
    end if;
    return query select v_task_id, v_run_id, 1, true;
end $$;

-- Spawn many tasks in one statement. p_items: [{"task_name": .., "params": .., "options": {..}}].
-- Returns one row per item, in order.
create function durable.spawn_many(p_queue text, p_items jsonb)
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now     timestamptz := durable.now();
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
    with items as materialized (
        select x.ord, x.i->>'task_name' as task_name, coalesce(x.i->'params', 'null') as params,
               coalesce(x.i->'options', '{}') as o, durable.uuidv7() as new_id, durable.uuidv7() as new_run
          from jsonb_array_elements(p_items) with ordinality as x(i, ord)
    ), prepared as (
        select i.*, i.o->>'idempotency_key' as key, coalesce((i.o->>'priority')::integer, 0) as prio,
               case when i.o ? 'at' then (i.o->>'at')::timestamptz
                    else v_now + make_interval(secs => coalesce(durable.seconds(i.o->'delay', 'delay'), 0))
               end as available_at
          from items i
    ), ins as (
        insert into durable.tasks (task_id, queue, task_name, params, headers, max_attempts, retry,
                                   timeout_s, heartbeat_timeout_s, priority, idempotency_key, created_at)
        select p.new_id, p_queue, p.task_name, p.params, coalesce(p.o->'headers', '{}'),
               coalesce((p.o->>'max_attempts')::integer, 3), p.o->'retry',
               durable.seconds(p.o->'timeout', 'timeout'),
               durable.seconds(p.o->'heartbeat_timeout', 'heartbeat_timeout'), p.prio, p.key, v_now
          from prepared p order by p.ord
        on conflict (queue, idempotency_key) where idempotency_key is not null do nothing
        returning task_id
    ), rins as (
        insert into durable.runs (run_id, task_id, queue, attempt, priority, state, available_at,
                                  created_at)
        select p.new_run, p.new_id, p_queue, 1, p.prio, 'pending', p.available_at, v_now
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

create function durable.claim(p_queue text, p_worker_id text, p_claim_timeout double precision,
                              p_qty integer default 1)
returns table (run_id uuid, task_id uuid, task_name text, params jsonb, headers jsonb,
               attempt integer, max_attempts integer, timeout_s double precision,
               heartbeat_timeout_s double precision, lease_expires_at timestamptz,
               has_checkpoints boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now   timestamptz := durable.now();
    v_lease timestamptz;
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
    return query
    with picked as (
        select r.run_id from durable.runs r
         where r.queue = p_queue and r.state = 'pending' and r.available_at <= v_now
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
    if found then
        insert into durable.workers as w (worker_id, started_at, last_seen_at, expires_at)
        values (p_worker_id, v_now, v_now, v_lease)
        on conflict (worker_id) do update
            set last_seen_at = v_now, expires_at = greatest(w.expires_at, v_lease), stopped_at = null;
    end if;
end $$;

create function durable.complete(p_queue text, p_run_id uuid, p_result jsonb default null)
returns void
language plpgsql as $$
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
end $$;

-- p_retry_at or p_retry_in (seconds from the database's now) override the retry strategy.
create function durable.fail(p_queue text, p_run_id uuid, p_error jsonb,
                             p_reason text default 'errored', p_retry_at timestamptz default null,
                             p_retry_in double precision default null)
returns uuid
language plpgsql as $$
declare
    v_now timestamptz := durable.now();
    v_run durable.runs;
begin
    if p_reason is null or p_reason not in ('errored', 'job_timeout', 'heartbeat_timeout', 'crash',
                                            'cancelled') then
        raise exception 'unknown failure reason %', p_reason using errcode = 'DU005';
    end if;
    if p_retry_in is not null and p_retry_in < 0 then
        raise exception 'retry_in must be a non-negative number of seconds' using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    return durable.fail_locked_run(
        v_run, p_reason, p_error,
        coalesce(p_retry_at, v_now + make_interval(secs => p_retry_in)), v_now);
end $$;

-- Extend the lease of a live, unexpired run by p_extend_by (default: its claim's lease) in one
-- fenced statement; raise DU001 otherwise. Returns the run as updated.
create function durable.extend_live_run(p_queue text, p_run_id uuid,
                                        p_extend_by double precision, p_now timestamptz)
returns durable.runs
language plpgsql as $$
declare
    v_run durable.runs;
begin
    update durable.runs r
       set lease_expires_at = greatest(r.lease_expires_at,
                                       p_now + make_interval(secs => coalesce(p_extend_by, r.lease_s)))
     where r.run_id = p_run_id and r.state = 'running' and r.lease_expires_at > p_now
       and (p_queue is null or r.queue = p_queue)
    returning r.* into v_run;
    if not found then
        perform durable.raise_lease_lost(p_run_id, 'run is not running under an unexpired lease');
    end if;
    return v_run;
end $$;

create function durable.extend_claim(p_queue text, p_run_id uuid,
                                     p_extend_by double precision default null)
returns timestamptz
language sql as $$
    select (durable.extend_live_run(p_queue, p_run_id, p_extend_by, durable.now())).lease_expires_at
$$;

-- One statement per worker per interval: extend every lease it holds and its own liveness.
-- Returns the run ids that were not extended (lost: expired, reaped, cancelled).
create function durable.extend_claims(p_worker_id text, p_run_ids uuid[],
                                      p_worker_ttl double precision)
returns table (lost_run_id uuid)
language plpgsql as $$
declare
    v_now timestamptz := durable.now();
begin
    update durable.workers
       set last_seen_at = v_now, expires_at = v_now + make_interval(secs => p_worker_ttl)
     where worker_id = p_worker_id;
    return query
    with extended as (
        update durable.runs r
           set lease_expires_at = v_now + make_interval(secs => r.lease_s)
         where r.run_id = any(p_run_ids) and r.state = 'running' and r.claimed_by = p_worker_id
           and r.lease_expires_at > v_now
        returning r.run_id
    )
    select u.id from unnest(p_run_ids) as u(id)
     where not exists (select 1 from extended e where e.run_id = u.id);
end $$;

create function durable.set_checkpoint(p_queue text, p_run_id uuid, p_step text, p_value jsonb,
                                       p_extend_by double precision default null)
returns void
language plpgsql as $$
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

create function durable.get_checkpoints(p_queue text, p_task_id uuid)
returns table (step_name text, value jsonb, run_id uuid, created_at timestamptz)
language plpgsql stable as $$
#variable_conflict use_column
begin
    if not exists (select 1 from durable.tasks t where t.task_id = p_task_id
                    and (p_queue is null or t.queue = p_queue)) then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return query
        select k.step_name, k.value, k.run_id, k.created_at from durable.checkpoints k
         where k.task_id = p_task_id order by k.created_at, k.step_name;
end $$;

-- Make the run's task claimable again after p_defer_seconds without spending an attempt
-- (unknown task during a rolling deploy, release on drain). Returns the new run's id.
create function durable.schedule_run(p_queue text, p_run_id uuid, p_defer_seconds double precision)
returns uuid
language plpgsql as $$
declare
    v_now  timestamptz := durable.now();
    v_run  durable.runs;
    v_next uuid := durable.uuidv7();
    v_at   timestamptz;
begin
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    v_at := v_now + make_interval(secs => greatest(coalesce(p_defer_seconds, 0), 0));
    update durable.runs set state = 'released', finished_at = v_now where run_id = p_run_id;
    insert into durable.runs (run_id, task_id, queue, attempt, priority, state, available_at, created_at)
    values (v_next, v_run.task_id, v_run.queue, v_run.attempt, v_run.priority, 'pending', v_at, v_now);
    if v_at <= v_now then
        perform pg_notify('durable_work', v_run.queue);
    end if;
    return v_next;
end $$;

create function durable.lock_task(p_queue text, p_task_id uuid) returns durable.tasks
language plpgsql as $$
declare
    v_task durable.tasks;
begin
    select * into v_task from durable.tasks t
     where t.task_id = p_task_id and (p_queue is null or t.queue = p_queue)
       for no key update;
    if not found then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return v_task;
end $$;

create function durable.cancel(p_queue text, p_task_id uuid) returns void
language plpgsql as $$
declare
    v_now  timestamptz := durable.now();
    v_task durable.tasks;
    v_run  durable.runs;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    if v_task.state <> 'pending' then
        raise exception 'task % is % and cannot be cancelled', p_task_id, v_task.state
            using errcode = 'DU003', detail = v_task.state;
    end if;
    select * into v_run from durable.runs r
     where r.task_id = p_task_id and r.state in ('pending', 'running', 'sleeping') for update;
    if found then
        perform durable.fail_locked_run(v_run, 'cancelled', null, null, v_now);
    else
        update durable.tasks set state = 'cancelled', finished_at = v_now,
                                 failure = jsonb_build_object('reason', 'cancelled')
         where task_id = p_task_id;
        perform pg_notify('durable_done', p_task_id::text);
    end if;
end $$;

-- A new run for a failed or cancelled task; its checkpoints are kept, so finished steps replay.
-- p_options may override max_attempts, retry, timeout, heartbeat_timeout, priority, delay / at.
create function durable.retry(p_queue text, p_task_id uuid, p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now     timestamptz := durable.now();
    v_task    durable.tasks;
    v_options jsonb := coalesce(p_options, '{}');
    v_run_id  uuid := durable.uuidv7();
    v_attempt integer;
    v_at      timestamptz;
begin
    v_task := durable.lock_task(p_queue, p_task_id);
    if v_task.state not in ('failed', 'cancelled') then
        raise exception 'task % is % — only failed or cancelled tasks can be retried',
            p_task_id, durable.live_state(v_task) using errcode = 'DU003', detail = v_task.state;
    end if;
    v_attempt := v_task.attempt + 1;
    v_at := case when v_options ? 'at' then (v_options->>'at')::timestamptz
                 else v_now + make_interval(secs => coalesce(durable.seconds(v_options->'delay', 'delay'), 0))
            end;
    update durable.tasks t
       set state = 'pending', attempt = v_attempt, finished_at = null, result = null,
           max_attempts = greatest(coalesce((v_options->>'max_attempts')::integer, t.max_attempts), v_attempt),
           retry = coalesce(v_options->'retry', t.retry),
           timeout_s = coalesce(durable.seconds(v_options->'timeout', 'timeout'), t.timeout_s),
           heartbeat_timeout_s = coalesce(durable.seconds(v_options->'heartbeat_timeout', 'heartbeat_timeout'),
                                          t.heartbeat_timeout_s),
           priority = coalesce((v_options->>'priority')::integer, t.priority)
     where t.task_id = p_task_id
    returning * into v_task;
    insert into durable.runs (run_id, task_id, queue, attempt, priority, state, available_at, created_at)
    values (v_run_id, p_task_id, v_task.queue, v_attempt, v_task.priority, 'pending', v_at, v_now);
    if v_at <= v_now then
        perform pg_notify('durable_work', v_task.queue);
    end if;
    return query select p_task_id, v_run_id, v_attempt, false;
end $$;

-- The whole task as one JSON document: the task, its derived state, and its runs oldest first.
create function durable.get_task(p_queue text, p_task_id uuid) returns jsonb
language plpgsql stable as $$
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
                            from durable.runs r where r.task_id = p_task_id), '[]'));
end $$;

create function durable.get_result(p_queue text, p_task_id uuid)
returns table (state text, result jsonb, failure jsonb)
language plpgsql stable as $$
#variable_conflict use_column
declare
    v_task durable.tasks;
begin
    select * into v_task from durable.tasks t
     where t.task_id = p_task_id and (p_queue is null or t.queue = p_queue);
    if not found then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return query select durable.live_state(v_task), v_task.result,
                        case when v_task.state in ('failed', 'cancelled') then v_task.failure end;
end $$;

create function durable.register_worker(p_worker_id text, p_host text, p_pid integer,
                                        p_queues text[], p_ttl double precision)
returns void
language plpgsql as $$
declare
    v_now timestamptz := durable.now();
begin
    insert into durable.workers as w (worker_id, host, pid, queues, started_at, last_seen_at, expires_at)
    values (p_worker_id, p_host, p_pid, coalesce(p_queues, '{}'), v_now, v_now,
            v_now + make_interval(secs => p_ttl))
    on conflict (worker_id) do update
        set host = excluded.host, pid = excluded.pid, queues = excluded.queues,
            last_seen_at = v_now, expires_at = excluded.expires_at, stopped_at = null;
end $$;

create function durable.worker_heartbeat(p_worker_id text, p_ttl double precision) returns boolean
language plpgsql as $$
declare
    v_now timestamptz := durable.now();
begin
    update durable.workers
       set last_seen_at = v_now, expires_at = v_now + make_interval(secs => p_ttl)
     where worker_id = p_worker_id and stopped_at is null;
    return found;
end $$;

create function durable.stop_worker(p_worker_id text) returns void
language plpgsql as $$
declare
    v_now timestamptz := durable.now();
begin
    update durable.workers set stopped_at = v_now, expires_at = v_now, last_seen_at = v_now
     where worker_id = p_worker_id;
end $$;

-- Operator views.
create function durable.queue_counts()
returns table (queue text, state text, count bigint)
language sql stable as $$
    select t.queue, coalesce(r.state, t.state) as state, count(*)
      from durable.tasks t
      left join durable.runs r on t.state = 'pending' and r.task_id = t.task_id
                              and r.state in ('pending', 'running', 'sleeping')
     group by 1, 2
     order by 1, 2
$$;

create function durable.list_failed_runs(p_queue text, p_limit integer)
returns table (task_id uuid, run_id uuid, queue text, task_name text, task_state text,
               attempt integer, max_attempts integer, failure_reason text, error jsonb,
               finished_at timestamptz)
language sql stable as $$
    select t.task_id, r.run_id, r.queue, t.task_name, durable.live_state(t), r.attempt,
           t.max_attempts, r.failure_reason, r.error, r.finished_at
      from durable.runs r join durable.tasks t on t.task_id = r.task_id
     where r.state = 'failed' and (p_queue is null or r.queue = p_queue)
     order by r.finished_at desc
     limit p_limit
$$;
