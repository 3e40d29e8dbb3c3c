-- durable: durable tasks on PostgreSQL. This is the model; read it first.
--
-- The protocol is the set of functions of schema durable; every client call is one
-- `select durable.fn(...)`: atomic, one round trip, the same from any language. The files of
-- sql/protocol/ hold the current text of every function, grant and role, by concern, applied in
-- name order; the tables, indexes and constraints are in sql/schema/ (forward-only migrations).
-- docs/architecture.md ("The protocol in SQL") says how to add or change a function.
--
-- TASK: a unit of work: (queue, task_name, params, headers, options, idempotency_key). Its state
-- (tasks.state) is 'pending' while it is live and then 'completed', 'failed' or 'cancelled'; while
-- it is live, its live run's state says more (pending, running or sleeping: durable.live_state).
-- Queue names match ^[a-z][a-z0-9_]{0,47}$; an idempotency key is unique per queue (a second spawn
-- with the key returns the first task).
--
-- RUN: one attempt at a task. A task has at most one live run (pending, running or sleeping); the
-- partial unique index runs_one_live enforces it. Anything that makes a task claimable again (a
-- retry, a reap, a release on drain, a deferral, a replay) inserts a new run, ending the old one if
-- it is live, and keeps the attempt number when no attempt was spent. A run ends 'completed',
-- 'failed', 'cancelled', 'released' (handed back without spending an attempt: schedule_run) or
-- 'suspended' (parked: a 'sleeping' run of the same attempt takes over and is claimed like a
-- pending one once its available_at has come).
--
-- LEASE: claim() sets a run 'running' with lease_expires_at = now + the claim's lease (lease_s).
-- A run_id is claimed at most once, so the run_id is the LEASE TOKEN: every write by a worker
-- names its run_id and is refused with SQLSTATE DU001 (lease lost), writing nothing, unless that
-- run is still running and its lease has not expired. A stale worker can never overwrite newer
-- state. A worker's heartbeat (extend_claims) renews the leases it holds; a checkpoint or a
-- progress report renews its run's lease too.
--
-- RESERVED: a run a worker claims ahead of a free handler slot (claim()'s runs beyond p_slots)
-- is reserved (runs.reserved) until its worker reports that its handler started; a run claimed
-- into a free slot counts as started from its claim (its handler starts at once: the safe side,
-- its worker's death spends its attempt). The report rides on statements the worker sends
-- anyway: its next claim or heartbeat (the p_started of claim() and extend_claims()); a
-- checkpoint, a progress write or a lease extension of the run counts as one, and a run that
-- completes or fails through its worker obviously started. A reserved run whose lease is reaped
-- never ran its handler as far as anyone knows: it ends 'released' (reserved, with the reap's
-- reason and error) and its task goes back to pending without spending an attempt, at most 3
-- times per task (reserved_reaps_free); any later such reap spends an attempt like any reap, so
-- a handler that kills its worker before its start is reported still ends failed.
--
-- CHECKPOINT: (task_id, step_name) -> value, written only by the lease holder, once: a later write
-- of the same step changes nothing. A later attempt reads the checkpoints back and skips the
-- finished steps. Sleeps and waits record their outcome as a checkpoint of their step as well,
-- so a replay finds it.
--
-- WORKER: registers its liveness (workers.expires_at), renewed by its heartbeat. claim() first
-- reaps the queue's runs whose lease lapsed: reason 'crash' when the worker's liveness lapsed too
-- (or it is unknown or stopped), 'heartbeat_timeout' when the worker was seen alive after the
-- lease lapsed (a blocked event loop, a stuck handler). Until one of the two is known, the run
-- waits.
--
-- FAILURE REASONS: errored, job_timeout, heartbeat_timeout, crash, cancelled. A run that fails for
-- any reason but 'cancelled' spends an attempt: the next run is scheduled by the task's retry
-- strategy (durable.next_delay), or the task ends 'failed' when its attempts are exhausted; a
-- cancelled run ends its task 'cancelled'. tasks.failure holds the last failure (reason, run_id,
-- attempt, error) and tasks.failed_at when it happened. Its REASON CLASS (transport, validation,
-- timeout, crash, exhausted, unknown: durable.reason_class) comes from the reason or, for an error
-- a handler raised, from the class the worker recorded with it.
--
-- UNSUCCESSFUL ENDS: a task that ends failed or cancelled, whatever ended it (its last attempt, a
-- reap, a cancel, cancel_by, a discard, a cancellation policy, a dependency, its parent), ends in
-- end_task_unsuccessfully(), and what follows happens there, in the same transaction: a
-- cancelled task cancels its CHILDREN (tasks.parent_task_id; on_parent_cancel 'cancel', the
-- default, or 'abandon'), and a task with an on_discard hook (discard_hook) gets a
-- 'durable.on_discard' task on its queue, which a worker claims to call the hook.
--
-- PARKING: sleep() and await_event() / await_task() / await_tasks() / receive_message() park a
-- run: it ends 'suspended' and a run of the same attempt waits 'sleeping' until its available_at
-- (the wake-up time; 'infinity' for a wait with no timeout). An event is stored (durable.events),
-- so one emitted before the wait is not lost; emit_event() wakes every waiter (durable.waits). A
-- child task's end delivers its outcome to the parent awaiting it (on_tasks_ended); a wait for
-- several tasks wakes once, when the last of them ended. A MESSAGE goes to one task
-- (send_message): stored until a receive of its topic takes it, in the order sent, once.
--
-- WORKFLOWS: a BATCH (spawn_batch) spawns a callback once every member ended; a task reads its
-- dependencies' results (get_dependency_results) and publishes its STATE (set_state); a PATCH
-- (decide_patch) records, once per task, whether a task takes the new path of changed code; each
-- run records the CODE VERSION of the worker that claimed it.
--
-- FLOW CONTROL, chosen per task at spawn: UNIQUENESS (options.unique = {keys, states, period,
-- replace, debounce}: a duplicate, same queue, task name and listed params keys within the period
-- and states, returns the existing task; replace updates the listed fields of a task not started
-- yet; debounce pushes its start later), DEPENDENCIES (options.depends_on: the task's run waits,
-- available_at 'infinity', until all of them completed; one that ends failed or cancelled cancels
-- it, with an error naming that dependency, and a retry of that one revives it), CANCELLATION
-- POLICIES (options.cancellation = {max_delay, max_duration}; tasks.cancel_at is the earliest
-- moment one may end the task, and enforce_cancellations(), run by every claim and every worker
-- heartbeat, re-checks the tasks whose moment passed), PARTITIONS (options.partition_key: claims
-- take runs round-robin across a queue's partitions) and LIMITS (durable.limits, per task name
-- and cluster-wide: at most max_running at once, rate_allowed starts per rate_period_s). TAGS
-- (tasks.tags) filter the operator's views and cancel_by(); PROGRESS (set_progress) is written
-- like any write of a run. A PAUSED QUEUE (durable.paused_queues: pause_queue, resume_queue)
-- accepts spawns and hands out no run to a claim until it is resumed.
--
-- CRON SCHEDULES (durable.cron_schedules) are declared in code or added at run time; workers
-- compute their slots (the cron expression in its time zone) and fire each slot through
-- fire_cron(), which spawns it once: the schedule's row lock and fired_through decide, whatever
-- the number of workers.
--
-- THE OPERATOR: FAILED WORK is the tasks whose latest failure is not behind them: failed for good
-- ('failed') or live and about to run again ('retrying'). retry() and replay() give a finished
-- task a new run that keeps its checkpoints (replay from a step drops that step's checkpoint and
-- every later one); discard() ends a task for good (a live one is cancelled), after which it can
-- be neither retried nor replayed; prune_tasks() and prune_bookkeeping() delete old finished work
-- in bounded batches.
--
-- LOCK ORDER, everywhere: task rows (FOR NO KEY UPDATE; several in task_id order) before their
-- run rows (several in run_id order). claim() never waits for a task: it locks the runs it claims
-- with SKIP LOCKED, and the tasks it reaps or cancels by policy with SKIP LOCKED too. Claims on a
-- queue with limits serialize on its limit rows. Transaction-level advisory locks serialize the
-- spawns of one unique key and the waits and emits of one event.
--
-- TIME is the database's: durable.now() is clock_timestamp(), or the setting durable.fake_now
-- when a session sets it (tests move leases, sleeps and timeouts without waiting). Keys are
-- UUIDv7, ordered by time; spawn_many's keys follow the batch's order.
--
-- ERRORS: DU001 lease lost, DU002 task not found, DU003 invalid state, DU004 invalid queue name,
-- DU005 invalid argument, DU006 batch not found (durable/protocol/store.py maps each to its
-- exception).
--
-- NOTIFICATIONS: channel durable_work (payload: the queue) when a run becomes claimable now;
-- channel durable_done when tasks end, its payload a comma-separated list of their task ids (up to
-- 200 per notification; a single id is a list of one).
--
-- PRIVILEGES: the protocol functions a worker or a producer calls are SECURITY DEFINER with a
-- pinned search_path; the helpers run as their caller, which inside the protocol is the owner.
-- 90_privileges.sql says who may call what.

-- ---------------------------------------------------------------------------------------------
-- helpers: time, keys and arguments

create or replace function durable.now() returns timestamptz
language sql volatile as $$
    select coalesce(nullif(current_setting('durable.fake_now', true), '')::timestamptz,
                    clock_timestamp())
$$;

-- UUIDv7 (RFC 9562): 48-bit unix milliseconds, version 7, random rest. Time-ordered keys.
create or replace function durable.uuidv7() returns uuid
language sql volatile as $$
    select encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(
                        int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3)
                    from 1 for 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- A UUIDv7 for item p_seq of a batch made at millisecond p_ms: the position in the 24 bits after
-- the millisecond (rand_a, then the top of rand_b) and 50 random bits below, so the keys of one
-- batch sort in the batch's order. The random part comes from random(), one cheap call per key
-- instead of a strong-random UUID per key: keys need uniqueness, not secrecy (two keys collide
-- only with the same millisecond, position and 50 bits).
create or replace function durable.uuidv7_seq(p_ms bigint, p_seq bigint) returns uuid
language sql volatile as $$
    select encode(int8send((p_ms << 16) | 28672 | ((p_seq >> 12) & 4095))  -- version 7
               || int8send((-9223372036854775808)::bigint                   -- variant 10
                           | ((p_seq & 4095) << 50)
                           | (random() * 1125899906842624)::bigint),        -- 2^50
                  'hex')::uuid
$$;

create or replace function durable.check_queue(p_queue text) returns void
language plpgsql immutable as $$
begin
    if p_queue is null or p_queue !~ '^[a-z][a-z0-9_]{0,47}$' then
        raise exception 'invalid queue name: %', coalesce(quote_literal(p_queue), 'NULL')
            using errcode = 'DU004';
    end if;
end $$;

-- A JSON number of seconds as double precision (null: null); p_what names it in the error.
create or replace function durable.seconds(p_value jsonb, p_what text) returns double precision
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

-- A JSON list of strings as text[] (null: empty); p_what names it in the error.
create or replace function durable.text_list(p_value jsonb, p_what text) returns text[]
language plpgsql immutable as $$
begin
    if p_value is null or jsonb_typeof(p_value) = 'null' then
        return '{}';
    end if;
    if jsonb_typeof(p_value) <> 'array'
       or exists (select 1 from jsonb_array_elements(p_value) e
                   where jsonb_typeof(e) <> 'string') then
        raise exception '% must be a list of strings, got %', p_what, p_value
            using errcode = 'DU005';
    end if;
    return array(select jsonb_array_elements_text(p_value));
end $$;

-- A list of reason classes (options.retry_on, options.discard_on): null when not given; anything
-- but a list of the six classes is refused.
create or replace function durable.reason_class_list(p_value jsonb, p_what text) returns text[]
language plpgsql immutable as $$
declare
    v_list text[];
begin
    if p_value is null or jsonb_typeof(p_value) = 'null' then
        return null;
    end if;
    v_list := durable.text_list(p_value, p_what);
    if not v_list <@ array['transport', 'validation', 'timeout', 'crash', 'exhausted',
                           'unknown'] then
        raise exception '% must be reason classes (transport, validation, timeout, crash, '
                        'exhausted, unknown), got %', p_what, p_value using errcode = 'DU005';
    end if;
    return v_list;
end $$;

-- What a child does when its parent is cancelled (options.on_parent_cancel): 'cancel' or
-- 'abandon'; anything else is refused.
create or replace function durable.check_parent_policy(p_policy text) returns void
language plpgsql immutable as $$
begin
    if p_policy is null or p_policy not in ('cancel', 'abandon') then
        raise exception 'on_parent_cancel must be ''cancel'' or ''abandon'', got %',
            coalesce(quote_literal(p_policy), 'NULL') using errcode = 'DU005';
    end if;
end $$;

-- When a spawn's task should first start: options.at, or now + options.delay.
create or replace function durable.start_time(p_options jsonb, p_now timestamptz)
returns timestamptz
language sql stable as $$
    select case when p_options ? 'at' then (p_options->>'at')::timestamptz
                else p_now + make_interval(
                         secs => coalesce(durable.seconds(p_options->'delay', 'delay'), 0))
           end
$$;

-- The first moment a cancellation policy may end a task scheduled at p_at (null: no policy).
create or replace function durable.first_cancel_at(p_cancellation jsonb, p_at timestamptz)
returns timestamptz
language sql immutable as $$
    select p_at + make_interval(secs => least(
               durable.seconds(p_cancellation->'max_delay', 'cancellation.max_delay'),
               durable.seconds(p_cancellation->'max_duration', 'cancellation.max_duration')))
$$;

-- ---------------------------------------------------------------------------------------------
-- helpers: tasks and runs

-- A task's state as a caller sees it: its live run's state while it is live.
create or replace function durable.live_state(p_task durable.tasks) returns text
language sql stable as $$
    select case when p_task.state = 'pending'
                then coalesce((select r.state from durable.runs r
                                where r.task_id = p_task.task_id
                                  and r.state in ('pending', 'running', 'sleeping')), 'pending')
                else p_task.state end
$$;

create or replace function durable.raise_lease_lost(p_run_id uuid, p_detail text) returns void
language plpgsql as $$
begin
    raise exception 'lease lost for run %', p_run_id using errcode = 'DU001', detail = p_detail;
end $$;

-- Lock task p_task_id (of p_queue, unless null) or raise DU002. A finished task in history
-- moves back to the hot tables first (durable.reopen_task), so the caller may change it there;
-- a lock that waited for the mover finds the row gone and looks in history again.
create or replace function durable.lock_task(p_queue text, p_task_id uuid) returns durable.tasks
language plpgsql as $$
declare
    v_task durable.tasks;
begin
    for i in 1..3 loop
        select * into v_task from durable.tasks t
         where t.task_id = p_task_id and (p_queue is null or t.queue = p_queue)
           for no key update;
        if found then
            return v_task;
        end if;
        exit when not durable.reopen_task(p_task_id);
    end loop;
    raise exception 'no task %', p_task_id using errcode = 'DU002';
end $$;

-- Lock the run p_run_id (after its task) and check it is the task's live, unexpired run; raise
-- DU001 otherwise.
create or replace function durable.lock_live_run(p_queue text, p_run_id uuid, p_now timestamptz)
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

-- A new run of p_task (its queue, priority, partition, name and concurrency key copied);
-- notifies when claimable now.
create or replace function durable.insert_run(p_task durable.tasks, p_attempt integer,
                                              p_state text, p_at timestamptz, p_now timestamptz)
returns uuid
language plpgsql as $$
declare
    v_id uuid := durable.uuidv7();
begin
    insert into durable.runs (run_id, task_id, queue, attempt, priority, partition_key, state,
                              available_at, created_at, task_name, concurrency_key)
    values (v_id, p_task.task_id, p_task.queue, p_attempt, p_task.priority, p_task.partition_key,
            p_state, p_at, p_now, p_task.task_name, p_task.concurrency_key);
    if p_at <= p_now then
        perform pg_notify('durable_work', p_task.queue);
    end if;
    return v_id;
end $$;

-- Record a step's value as its checkpoint, unless the step has one already.
create or replace function durable.record_step(p_task_id uuid, p_step text, p_value jsonb,
                                               p_run_id uuid, p_now timestamptz)
returns void
language sql as $$
    insert into durable.checkpoints (task_id, step_name, value, run_id, created_at)
    values (p_task_id, p_step, coalesce(p_value, 'null'), p_run_id, p_now)
    on conflict (task_id, step_name) do nothing
$$;
