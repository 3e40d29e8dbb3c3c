-- Flow control: limits per task name, dependencies between tasks, cancellation by filter, and
-- paused queues. (Uniqueness is decided at spawn, 10_spawn.sql; cancellation policies and
-- partitions at claim, 20_claim.sql.)

-- Set (or, with every limit null, remove) the cluster-wide limits of a task name, recorded on
-- a queue: at most p_max_running runs at once and at most p_key_limit at once per concurrency
-- key (both across every queue: pick_runs), and p_rate_allowed starts per p_rate_period seconds
-- on the queue.
create or replace function durable.set_limit(p_queue text, p_task_name text,
                                             p_max_running integer, p_rate_allowed integer,
                                             p_rate_period double precision,
                                             p_key_limit integer default null)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
begin
    perform durable.check_queue(p_queue);
    if (p_rate_allowed is null) <> (p_rate_period is null) then
        raise exception 'a rate limit needs both a count and a period' using errcode = 'DU005';
    end if;
    if p_max_running < 1 or p_rate_allowed < 1 or p_rate_period <= 0 or p_key_limit < 1 then
        raise exception 'limits must be positive' using errcode = 'DU005';
    end if;
    if p_max_running is null and p_rate_allowed is null and p_key_limit is null then
        delete from durable.limits l where l.queue = p_queue and l.task_name = p_task_name;
        return;
    end if;
    insert into durable.limits as l (queue, task_name, max_running, rate_allowed, rate_period_s,
                                     key_limit)
    values (p_queue, p_task_name, p_max_running, p_rate_allowed, p_rate_period, p_key_limit)
    on conflict (queue, task_name) do update
        set max_running = excluded.max_running, rate_allowed = excluded.rate_allowed,
            rate_period_s = excluded.rate_period_s, key_limit = excluded.key_limit
     where (l.max_running, l.rate_allowed, l.rate_period_s, l.key_limit)
           is distinct from (excluded.max_running, excluded.rate_allowed, excluded.rate_period_s,
                             excluded.key_limit);
end $$;

-- ---------------------------------------------------------------------------------------------
-- dependencies

-- Ended tasks release their dependents: a completed one lets a dependent run once all of its
-- dependencies completed; a failed or cancelled one cancels its dependents, naming itself.
create or replace function durable.resolve_dependents(p_task_ids uuid[], p_now timestamptz)
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
        select * into v_task from durable.tasks t
         where t.task_id = v_edge.task_id for no key update;
        if not found or v_task.state <> 'pending' then
            delete from durable.task_dependencies d where d.task_id = v_edge.task_id;
            continue;
        end if;
        if v_edge.dep_state = 'completed' then
            delete from durable.task_dependencies d
             where d.task_id = v_edge.task_id and d.depends_on = v_edge.depends_on;
            if not exists (select 1 from durable.task_dependencies d
                            where d.task_id = v_edge.task_id) then
                perform durable.wake_pending(v_task, p_now);
            end if;
        elsif v_edge.dep_state in ('failed', 'cancelled') then
            delete from durable.task_dependencies d where d.task_id = v_edge.task_id;
            perform durable.cancel_locked_task(
                v_task,
                jsonb_build_object(
                    'type', 'DependencyFailed',
                    'message', format('dependency %s ended %s', v_edge.depends_on,
                                      v_edge.dep_state),
                    'dependency', v_edge.depends_on),
                p_now);
        end if;
    end loop;
end $$;

-- A task whose dependencies all completed: its pending run may start at its scheduled time.
create or replace function durable.wake_pending(p_task durable.tasks, p_now timestamptz)
returns void
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

-- ---------------------------------------------------------------------------------------------
-- cancellation by filter

-- Cancel every live task matching all the given filters (at least one), skipping tasks locked by
-- another transaction. Returns how many.
create or replace function durable.cancel_by(p_queue text, p_task_name text, p_tags text[])
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
           -- (tags <> '{}' holds of every task carrying p_tags: it lets the tags' index, which
           -- holds only tasks with tags, serve the filter)
           and (coalesce(cardinality(p_tags), 0) = 0 or t.tags @> p_tags and t.tags <> '{}')
         order by t.task_id
           for no key update skip locked
    loop
        -- a dependent cancelled by an earlier one of this loop has ended already
        continue when (select t.state from durable.tasks t
                        where t.task_id = v_task.task_id) <> 'pending';
        perform durable.cancel_locked_task(
            v_task, jsonb_build_object('type', 'CancelledByFilter',
                                       'message', 'cancelled by cancel_by'), v_now);
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

-- ---------------------------------------------------------------------------------------------
-- paused queues

-- Pause queue p_queue: it still accepts spawns, but claim() hands out none of its runs until it
-- is resumed (running runs go on). True when it was not paused before.
create or replace function durable.pause_queue(p_queue text) returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
begin
    perform durable.check_queue(p_queue);
    insert into durable.paused_queues (queue, paused_at) values (p_queue, durable.now())
    on conflict (queue) do nothing;
    return found;
end $$;

-- Resume queue p_queue and wake its workers. True when it was paused.
create or replace function durable.resume_queue(p_queue text) returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
begin
    perform durable.check_queue(p_queue);
    delete from durable.paused_queues q where q.queue = p_queue;
    if found then
        perform pg_notify('durable_work', p_queue);
        return true;
    end if;
    return false;
end $$;

-- The paused queues, by name, with the moment each was paused.
create or replace function durable.list_paused_queues()
returns table (queue text, paused_at timestamptz)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select q.queue, q.paused_at from durable.paused_queues q order by q.queue
$$;
