-- Parking: a run that sleeps or waits for an event or another task ends 'suspended', and a run of
-- the same attempt waits 'sleeping' until its available_at (the wake-up time; 'infinity' for a
-- wait with no timeout). claim() takes a sleeping run whose time has come like a pending one, so
-- a sleeper wakes whatever happened to the workers meanwhile. Each outcome is recorded as the
-- step's checkpoint, so a replay finds it and does not wait again.

-- Durable sleep, step p_step of the run: the first call records the wake-up time (now +
-- p_seconds, or p_until) as the step's checkpoint and parks the run until then. Returns true when
-- the run was parked (the caller stops), false when the time has already come.
create or replace function durable.sleep(p_queue text, p_run_id uuid, p_step text,
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
        raise exception 'sleep seconds must be non-negative, got %', p_seconds
            using errcode = 'DU005';
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

-- Park the live run p_run (locked, after its task): it ends 'suspended' and a run of the same
-- attempt sleeps until p_wake_at. Returns the sleeping run's id.
create or replace function durable.suspend_run(p_run durable.runs, p_wake_at timestamptz,
                                               p_now timestamptz)
returns uuid
language plpgsql as $$
declare
    v_task durable.tasks;
begin
    update durable.runs set state = 'suspended', finished_at = p_now where run_id = p_run.run_id;
    select * into v_task from durable.tasks where task_id = p_run.task_id;
    return durable.insert_run(v_task, p_run.attempt, 'sleeping', p_wake_at, p_now);
end $$;

-- Wake a parked task now: its sleeping run becomes claimable.
create or replace function durable.wake(p_run_id uuid, p_now timestamptz) returns void
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

-- The wait of step p_step of the live run p_run (locked) for event p_event or task p_child,
-- recorded on the first call with its timeout: 'timeout' (recorded as the step's checkpoint)
-- once the timeout passed, else 'suspended' (the run parked until the wait's timeout).
create or replace function durable.park_on_wait(p_run durable.runs, p_step text, p_event text,
                                                p_child uuid, p_timeout double precision,
                                                p_now timestamptz)
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
        perform durable.record_step(p_run.task_id, p_step, '{"timed_out": true}', p_run.run_id,
                                    p_now);
        delete from durable.waits w where w.task_id = p_run.task_id and w.step_name = p_step;
        return 'timeout';
    end if;
    v_next := durable.suspend_run(p_run, coalesce(v_wait.timeout_at, 'infinity'), p_now);
    update durable.waits w set run_id = v_next
     where w.task_id = p_run.task_id and w.step_name = p_step;
    return 'suspended';
end $$;

-- ---------------------------------------------------------------------------------------------
-- events

-- Wait for event p_event, as step p_step of the run. status: 'received' (payload), 'timeout'
-- (the wait's timeout passed: recorded, so a replay times out too) or 'suspended' (parked until
-- the event or the timeout). The event's advisory lock orders it with emit_event().
create or replace function durable.await_event(p_queue text, p_run_id uuid, p_step text,
                                               p_event text, p_timeout double precision)
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
                                    jsonb_build_object('payload', v_event.payload), p_run_id,
                                    v_now);
        delete from durable.waits w where w.task_id = v_run.task_id and w.step_name = p_step;
        return query select 'received'::text, v_event.payload;
        return;
    end if;
    return query select durable.park_on_wait(v_run, p_step, p_event, null, p_timeout, v_now),
                        null::jsonb;
end $$;

-- Emit event p_name: stored (a later wait receives it at once; a second emit replaces the
-- payload) and delivered to every task waiting for it now: the payload becomes the waiting
-- step's checkpoint and its run wakes. Returns how many were woken.
create or replace function durable.emit_event(p_name text, p_payload jsonb default null)
returns integer
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

-- ---------------------------------------------------------------------------------------------
-- child tasks

-- Wait for task p_child to end, as step p_step of the run: status 'done' with the outcome
-- {state, result, failure}, 'timeout', or 'suspended' (parked until the child ends).
create or replace function durable.await_task(p_queue text, p_run_id uuid, p_step text,
                                              p_child uuid, p_timeout double precision)
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
        return query select case when v_value ? 'timed_out' then 'timeout' else 'done' end,
                            v_value;
        return;
    end if;
    -- the child's end (which locks its row) either happened or sees this wait
    perform durable.share_tasks(array[p_child]);
    select * into v_child from durable.all_tasks t where t.task_id = p_child;
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

-- Deliver the outcome of ended tasks to the parents awaiting them: recorded as the waiting step's
-- checkpoint, and the parent's run wakes.
create or replace function durable.deliver_child_results(p_task_ids uuid[], p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_wait record;
begin
    for v_wait in
        select w.*,
               jsonb_build_object('state', c.state, 'result', c.result, 'failure', c.failure)
                   as doc
          from durable.waits w join durable.tasks c on c.task_id = w.child_task_id
         where w.child_task_id = any(p_task_ids)
         order by w.task_id
    loop
        perform 1 from durable.tasks t where t.task_id = v_wait.task_id for no key update;
        perform durable.record_step(v_wait.task_id, v_wait.step_name, v_wait.doc, v_wait.run_id,
                                    p_now);
        delete from durable.waits w
         where w.task_id = v_wait.task_id and w.step_name = v_wait.step_name;
        perform durable.wake(v_wait.run_id, p_now);
    end loop;
end $$;
