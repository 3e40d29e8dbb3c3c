-- Messages to one task and the state a task publishes. Unlike an event (a latch every waiter of
-- the name receives), a message goes to one task: it is stored until a receive of its topic takes
-- it, the messages of a topic are received in the order they were sent, and each is received
-- once. A receive with nothing to take parks the run like any wait (40_parking.sql). The sends to
-- a task and its receives take the task's lock, so they happen one at a time.

-- Names of topics and state keys: 1 to 255 characters (p_what names the argument).
create or replace function durable.check_name(p_value text, p_what text) returns void
language plpgsql immutable as $$
begin
    if p_value is null or length(p_value) = 0 or length(p_value) > 255 then
        raise exception '% must be 1 to 255 characters, got %', p_what,
            coalesce(length(p_value)::text || ' characters', 'NULL')
            using errcode = 'DU005';
    end if;
end $$;

-- Send p_payload to task p_task_id on topic p_topic. A receive of the topic that waits now (the
-- task is parked on it) gets it at once: it becomes the waiting step's checkpoint and the task
-- wakes. Otherwise the message is stored for the task's next receive of the topic. DU002 for an
-- unknown task, DU003 for one that ended. Returns true when it woke a waiting receive.
create or replace function durable.send_message(p_task_id uuid, p_topic text,
                                                p_payload jsonb default null)
returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now  timestamptz := durable.now();
    v_task durable.tasks;
    v_wait durable.waits;
begin
    perform durable.check_name(p_topic, 'topic');
    v_task := durable.lock_task(null, p_task_id);
    if v_task.state <> 'pending' then
        raise exception 'task % is % — a task that ended receives no more messages',
            p_task_id, v_task.state using errcode = 'DU003', detail = v_task.state;
    end if;
    delete from durable.waits w
     where (w.task_id, w.step_name) = (
            select x.task_id, x.step_name from durable.waits x
             where x.task_id = p_task_id and x.topic = p_topic
             order by x.created_at limit 1)
    returning * into v_wait;
    if found then
        perform durable.record_step(p_task_id, v_wait.step_name,
                                    jsonb_build_object('payload', coalesce(p_payload, 'null')),
                                    v_wait.run_id, v_now);
        perform durable.wake(v_wait.run_id, v_now);
        return true;
    end if;
    insert into durable.messages (task_id, topic, payload, sent_at)
    values (p_task_id, p_topic, coalesce(p_payload, 'null'), v_now);
    return false;
end $$;

-- Receive the oldest message on topic p_topic, as step p_step of the run: status 'received'
-- (payload; the message is deleted, its payload is the step's checkpoint), 'timeout' (recorded,
-- so a replay times out too) or 'suspended' (parked until a message or the timeout).
create or replace function durable.receive_message(p_queue text, p_run_id uuid, p_step text,
                                                   p_topic text, p_timeout double precision)
returns table (status text, payload jsonb)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now     timestamptz := durable.now();
    v_run     durable.runs;
    v_value   jsonb;
    v_payload jsonb;
begin
    if p_step is null or length(p_step) = 0 then
        raise exception 'step name must not be empty' using errcode = 'DU005';
    end if;
    perform durable.check_name(p_topic, 'topic');
    if p_timeout < 0 then
        raise exception 'timeout must be non-negative, got %', p_timeout using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    select k.value into v_value from durable.checkpoints k
     where k.task_id = v_run.task_id and k.step_name = p_step;
    if found then
        return query select case when v_value ? 'timed_out' then 'timeout' else 'received' end,
                            v_value->'payload';
        return;
    end if;
    delete from durable.messages m
     where m.seq = (select x.seq from durable.messages x
                     where x.task_id = v_run.task_id and x.topic = p_topic
                     order by x.seq limit 1)
    returning m.payload into v_payload;
    if found then
        perform durable.record_step(v_run.task_id, p_step,
                                    jsonb_build_object('payload', v_payload), p_run_id, v_now);
        return query select 'received'::text, v_payload;
        return;
    end if;
    if not exists (select 1 from durable.waits w
                    where w.task_id = v_run.task_id and w.step_name = p_step) then
        insert into durable.waits (task_id, step_name, run_id, topic, timeout_at, created_at)
        values (v_run.task_id, p_step, p_run_id, p_topic,
                v_now + make_interval(secs => p_timeout), v_now);
    end if;
    return query select durable.park_on_wait(v_run, p_step, null, null, p_timeout, v_now),
                        null::jsonb;
end $$;

-- ---------------------------------------------------------------------------------------------
-- published state

-- Publish p_value under p_key for the run's task (the last write of a key wins): where the task
-- stands, for anyone to read with get_state(). A write of the run, fenced like a checkpoint; it
-- extends the run's lease.
create or replace function durable.set_state(p_queue text, p_run_id uuid, p_key text,
                                             p_value jsonb)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now     timestamptz := durable.now();
    v_task_id uuid;
begin
    perform durable.check_name(p_key, 'state key');
    v_task_id := (durable.extend_live_run(p_queue, p_run_id, null, v_now)).task_id;
    insert into durable.states as s (task_id, key, value, run_id, updated_at)
    values (v_task_id, p_key, coalesce(p_value, 'null'), p_run_id, v_now)
    on conflict (task_id, key) do update
        set value = excluded.value, run_id = excluded.run_id, updated_at = excluded.updated_at;
end $$;

-- The state task p_task_id published: the value of p_key, or (p_key null) of every key, by key.
-- DU002 for an unknown task.
create or replace function durable.get_state(p_queue text, p_task_id uuid,
                                             p_key text default null)
returns table (key text, value jsonb, updated_at timestamptz)
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
    if not exists (select 1 from durable.all_tasks t where t.task_id = p_task_id
                    and (p_queue is null or t.queue = p_queue)) then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return query
        select s.key, s.value, s.updated_at from durable.states s
         where s.task_id = p_task_id and (p_key is null or s.key = p_key)
         order by s.key;
end $$;
