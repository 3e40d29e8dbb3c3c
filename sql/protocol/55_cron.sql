-- Cron schedules: periodic spawns, declared in code or added at run time, one spawn per slot.
--
-- A schedule (durable.cron_schedules) spawns task_name on queue with params and options at every
-- slot of its cron expression read in its IANA time zone. Workers compute the slots (the SQL
-- never parses an expression) and fire each due slot with fire_cron(), which spawns it with the
-- idempotency key durable:cron:<name>:<slot in UTC, ISO 8601>, so the slot is spawned once
-- however many workers fire it, and moves fired_through forward. fired_through is where the next
-- catch-up starts: after downtime a worker fires the slots after it that the schedule's missed
-- policy keeps (skip: only those at most a minute late; latest: the newest one too; all: every
-- one, a bounded number). A paused schedule fires nothing; resuming it moves fired_through to
-- now, so the slots that passed while it was paused are not caught up.

-- Add or update schedule p_name; true when it was added. A schedule declared in code (p_source
-- 'code', written by every worker that starts) keeps its pause and its fired_through when its
-- definition changes; one added at run time (p_source 'api') cannot take the name of one that
-- code declares.
create or replace function durable.set_cron_schedule(p_name text, p_expr text, p_timezone text,
                                                     p_queue text, p_task_name text,
                                                     p_params jsonb, p_options jsonb,
                                                     p_missed text, p_source text)
returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now      timestamptz := durable.now();
    v_existing text;
begin
    perform durable.check_queue(p_queue);
    if p_name is null or length(p_name) not between 1 and 200 then
        raise exception 'a cron schedule name must be 1 to 200 characters, got %',
            coalesce(quote_literal(p_name), 'NULL') using errcode = 'DU005';
    end if;
    if p_expr is null or length(p_expr) not between 1 and 200 then
        raise exception 'a cron expression must be 1 to 200 characters' using errcode = 'DU005';
    end if;
    if p_task_name is null or length(p_task_name) = 0 then
        raise exception 'a cron schedule needs a task name' using errcode = 'DU005';
    end if;
    if p_missed is null or p_missed not in ('skip', 'latest', 'all') then
        raise exception 'missed must be skip, latest or all, got %',
            coalesce(quote_literal(p_missed), 'NULL') using errcode = 'DU005';
    end if;
    if p_source is null or p_source not in ('code', 'api') then
        raise exception 'source must be code or api, got %',
            coalesce(quote_literal(p_source), 'NULL') using errcode = 'DU005';
    end if;
    if p_options is not null and jsonb_typeof(p_options) <> 'object' then
        raise exception 'options must be a JSON object' using errcode = 'DU005';
    end if;
    begin
        if p_timezone is null or length(p_timezone) = 0 then
            raise invalid_parameter_value;
        end if;
        perform v_now at time zone p_timezone;
    exception when invalid_parameter_value then
        raise exception 'invalid time zone %: use an IANA name such as Europe/Paris, or UTC',
            coalesce(quote_literal(p_timezone), 'NULL') using errcode = 'DU005';
    end;

    select s.source into v_existing from durable.cron_schedules s
     where s.name = p_name for update;
    if found and v_existing = 'code' and p_source = 'api' then
        raise exception 'cron schedule % is declared in code (app.cron): change it there',
            quote_literal(p_name) using errcode = 'DU005';
    end if;
    insert into durable.cron_schedules as s (name, expr, timezone, queue, task_name, params,
                                             options, missed, source, fired_through, created_at,
                                             updated_at)
    values (p_name, p_expr, p_timezone, p_queue, p_task_name, p_params,
            coalesce(p_options, '{}'), p_missed, p_source, v_now, v_now, v_now)
    on conflict (name) do update
        set expr = excluded.expr, timezone = excluded.timezone, queue = excluded.queue,
            task_name = excluded.task_name, params = excluded.params,
            options = excluded.options, missed = excluded.missed, source = excluded.source,
            updated_at = v_now
     where (s.expr, s.timezone, s.queue, s.task_name, s.params, s.options, s.missed, s.source)
           is distinct from (excluded.expr, excluded.timezone, excluded.queue,
                             excluded.task_name, excluded.params, excluded.options,
                             excluded.missed, excluded.source);
    return v_existing is null;
end $$;

-- Remove schedule p_name (the tasks it spawned stay); true when it existed.
create or replace function durable.remove_cron_schedule(p_name text) returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
begin
    delete from durable.cron_schedules s where s.name = p_name;
    return found;
end $$;

-- Pause schedule p_name: it fires nothing until resumed. False when there is no such schedule.
create or replace function durable.pause_cron_schedule(p_name text) returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
begin
    update durable.cron_schedules s
       set paused_at = coalesce(s.paused_at, durable.now()), updated_at = durable.now()
     where s.name = p_name;
    return found;
end $$;

-- Resume schedule p_name from now on: the slots that passed while it was paused are not caught
-- up. False when there is no such schedule.
create or replace function durable.resume_cron_schedule(p_name text) returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
begin
    update durable.cron_schedules s
       set fired_through = case when s.paused_at is null then s.fired_through
                                else greatest(s.fired_through, v_now) end,
           paused_at = null, updated_at = v_now
     where s.name = p_name;
    return found;
end $$;

-- The schedules of p_queues (null: every queue), by name, and the database's time, as one JSON
-- document: {"now": ..., "schedules": [row, ...]}. Workers read it to compute the due slots on the
-- database's clock.
create or replace function durable.list_cron_schedules(p_queues text[] default null)
returns jsonb
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    select jsonb_build_object(
               'now', durable.now(),
               'schedules', coalesce(jsonb_agg(to_jsonb(s) order by s.name), '[]'))
      from durable.cron_schedules s
     where p_queues is null or s.queue = any(p_queues)
$$;

-- The idempotency key of slot p_slot of schedule p_name: the slot in UTC as Python's isoformat()
-- writes it (microseconds only when there are some).
create or replace function durable.cron_key(p_name text, p_slot timestamptz) returns text
language sql immutable as $$
    select 'durable:cron:' || p_name || ':'
           || to_char(p_slot at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || case when extract(microseconds from p_slot)::bigint % 1000000 = 0 then ''
                   else to_char(p_slot at time zone 'UTC', '.US') end
           || '+00:00'
$$;

-- Fire slot p_slot of schedule p_name: spawn its task with the slot's idempotency key (a slot
-- fired before returns its task, created false) and move fired_through forward. Nothing when the
-- schedule is paused or gone, and nothing (but fired_through moves past it) when its missed policy
-- is 'skip' and the slot is more than a minute late by the database's clock: the late-slot rule
-- holds here, where the slot fires, so a worker that stalled after it chose the slot (or a
-- statement held up in the database) cannot fire it late. The schedule's options apply, but not
-- its uniqueness: the slot's key alone decides, so a later slot is never a duplicate of an earlier
-- slot's task.
create or replace function durable.fire_cron(p_name text, p_slot timestamptz)
returns table (task_id uuid, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_s       durable.cron_schedules;
    v_task_id uuid;
    v_created boolean;
begin
    if p_slot is null then
        raise exception 'a cron slot must be a time' using errcode = 'DU005';
    end if;
    select * into v_s from durable.cron_schedules s where s.name = p_name for update;
    if not found or v_s.paused_at is not null then
        return;
    end if;
    if v_s.missed = 'skip' and durable.now() - p_slot > interval '1 minute' then
        update durable.cron_schedules s set fired_through = greatest(s.fired_through, p_slot)
         where s.name = p_name;
        return;
    end if;
    select sp.task_id, sp.created into v_task_id, v_created
      from durable.spawn(v_s.queue, v_s.task_name, v_s.params,
                         (v_s.options - 'unique')
                         || jsonb_build_object('idempotency_key',
                                               durable.cron_key(p_name, p_slot))) sp;
    update durable.cron_schedules s
       set fired_through = greatest(s.fired_through, p_slot),
           last_slot = greatest(s.last_slot, p_slot),
           last_task_id = case when s.last_slot is null or p_slot >= s.last_slot then v_task_id
                               else s.last_task_id end
     where s.name = p_name;
    return query select v_task_id, v_created;
end $$;
