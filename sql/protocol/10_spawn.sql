-- Spawning: a task and its first run, one at a time or in batches.

-- Spawn a task on p_queue. p_options (all optional): idempotency_key, max_attempts, retry,
-- timeout, heartbeat_timeout, priority, delay or at, headers, tags, partition_key, concurrency_key,
-- parent_task_id, on_parent_cancel ('cancel' or 'abandon'), unique, depends_on, cancellation,
-- on_discard, retry_on and discard_on (reason classes). Returns the task and its run; created is
-- false when the idempotency key or a unique spec found an existing task (that one is returned). A
-- task with open dependencies waits (available_at 'infinity'); one whose dependency already
-- failed or was cancelled is cancelled at once, and so is a child (on_parent_cancel 'cancel')
-- whose parent was cancelled already.
create or replace function durable.spawn(p_queue text, p_task_name text, p_params jsonb,
                                         p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now      timestamptz;
    v_options  jsonb;
    v_key      text;
    v_unique   jsonb;
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
    v_parent   uuid;
    v_policy   text;
    v_orphaned boolean := false;
    v_found    uuid;
    v_new_id   uuid;
begin
    perform durable.check_queue(p_queue);
    if p_task_name is null or length(p_task_name) = 0 or length(p_task_name) > 255 then
        raise exception 'task name must be 1 to 255 characters' using errcode = 'DU005';
    end if;
    if p_options is null or p_options = '{}' then
        -- no options (the common spawn): every column has its default, no key can conflict and
        -- the task is due now; one statement writes the task and its run, queues the
        -- notification and answers (each plpgsql statement and expression costs a spawn that
        -- is its own transaction a few microseconds), nothing is looked up
        return query
            with spawned as materialized (
                select durable.uuidv7() as task_id, durable.uuidv7() as run_id,
                       durable.now() as at, pg_notify('durable_work', p_queue)
            ), task as (
                insert into durable.tasks (task_id, queue, task_name, params, created_at,
                                           scheduled_at)
                select s.task_id, p_queue, p_task_name, coalesce(p_params, 'null'), s.at, s.at
                  from spawned s
            ), run as (
                insert into durable.runs (run_id, task_id, queue, attempt, state, available_at,
                                          created_at, task_name)
                select s.run_id, s.task_id, p_queue, 1, 'pending', s.at, s.at, p_task_name
                  from spawned s
            )
            select s.task_id, s.run_id, 1, true from spawned s;
        return;
    end if;
    v_now := durable.now();
    v_options := p_options;
    if p_params is null then
        p_params := 'null'::jsonb;
    end if;
    -- the options, read only by a spawn that has some
    v_key := v_options->>'idempotency_key';
    v_unique := v_options->'unique';
    v_parent := (v_options->>'parent_task_id')::uuid;
    v_policy := coalesce(v_options->>'on_parent_cancel', 'cancel');
    perform durable.check_parent_policy(v_policy);
    v_at := durable.start_time(v_options, v_now);

    if v_unique is not null and jsonb_typeof(v_unique) <> 'null' then
        v_ukey := durable.unique_key(p_task_name, p_params, v_unique);
        v_period := durable.seconds(v_unique->'period', 'unique.period');
        v_states := coalesce(durable.text_list(v_unique->'states', 'unique.states'), '{}');
        if cardinality(v_states) = 0 and v_unique ? 'debounce' then
            -- a debounced task is joined only before it starts: once it ran (or runs), the next
            -- burst spawns a new task, so an edit after the start is not lost
            v_states := array['pending'];
        elsif cardinality(v_states) = 0 then
            v_states := array['pending', 'running', 'sleeping', 'completed'];
        elsif not v_states <@ array['pending', 'running', 'sleeping', 'completed', 'failed',
                                    'cancelled'] then
            raise exception 'unique.states must be task states, got %', v_states
                using errcode = 'DU005';
        end if;
        -- one spawn of a unique key at a time decides whether it has a duplicate
        perform pg_advisory_xact_lock(
            hashtextextended('durable.unique:' || p_queue || ':' || v_ukey, 0));
        -- the newest duplicate, hot or finished (one statement: one snapshot), then its lock; a
        -- task that moved meanwhile is read again where it went
        for i in 1..5 loop
            select x.task_id into v_found from (
                select t.task_id, t.created_at from durable.tasks t
                 where t.queue = p_queue and t.unique_key = v_ukey
                   and (v_period is null
                        or t.created_at >= v_now - make_interval(secs => v_period))
                   and durable.live_state(t) = any(v_states)
                union all
                select t.task_id, t.created_at from durable.tasks_history t
                 where t.queue = p_queue and t.unique_key = v_ukey
                   and (v_period is null
                        or t.created_at >= v_now - make_interval(secs => v_period))
                   and t.state = any(v_states)
            ) x order by x.created_at desc limit 1;
            exit when not found;
            select t.* into v_existing from durable.tasks t
             where t.task_id = v_found and durable.live_state(t) = any(v_states)
               for no key update;
            if not found then
                select t.* into v_existing from durable.tasks_history t
                 where t.task_id = v_found and t.state = any(v_states);
            end if;
            if found then
                return query
                    select * from durable.apply_duplicate(v_existing, p_params, v_options, v_now);
                return;
            end if;
        end loop;
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
        -- the dependencies cannot end (or move back from history) while this spawn decides
        v_missing := durable.share_tasks(v_deps);
        if v_missing is not null then
            raise exception 'depends_on names no task: %', v_missing using errcode = 'DU005';
        end if;
        v_open := array(select t.task_id from durable.tasks t
                         where t.task_id = any(v_deps) and t.state = 'pending');
        select t.task_id, t.state into v_broken, v_bstate from durable.all_tasks t
         where t.task_id = any(v_deps) and t.state in ('failed', 'cancelled')
         order by t.task_id limit 1;
    end if;
    if v_parent is not null and v_policy = 'cancel' then
        -- the parent cannot be cancelled while this spawn decides: its cancel either happened
        -- (the child is born cancelled) or sees the child
        perform durable.share_tasks(array[v_parent]);
        select t.state = 'cancelled' into v_orphaned from durable.all_tasks t
         where t.task_id = v_parent;
        v_orphaned := coalesce(v_orphaned, false);
    end if;

    v_new_id := durable.uuidv7();
    if v_key is not null then
        -- the key over hot and finished tasks: taken here, or the task that holds it answers
        insert into durable.task_keys (queue, idempotency_key, task_id)
        values (p_queue, v_key, v_new_id)
        on conflict do nothing;
        if not found then
            return query
                select t.task_id, r.run_id, t.attempt, false
                  from durable.task_keys k
                  join durable.all_tasks t on t.task_id = k.task_id
                  left join lateral (select r.run_id from durable.all_runs r
                                      where r.task_id = t.task_id
                                      order by r.created_at desc, r.run_id desc limit 1) r on true
                 where k.queue = p_queue and k.idempotency_key = v_key;
            return;
        end if;
    end if;
    insert into durable.tasks as t (task_id, queue, task_name, params, headers, max_attempts,
                                    retry, timeout_s, heartbeat_timeout_s, priority,
                                    idempotency_key, created_at, tags, partition_key,
                                    parent_task_id, depends_on, unique_key, cancellation,
                                    scheduled_at, cancel_at, discard_hook, on_parent_cancel,
                                    concurrency_key, retry_on, discard_on)
    values (v_new_id, p_queue, p_task_name, p_params, coalesce(v_options->'headers', '{}'),
            coalesce((v_options->>'max_attempts')::integer, 3), v_options->'retry',
            durable.seconds(v_options->'timeout', 'timeout'),
            durable.seconds(v_options->'heartbeat_timeout', 'heartbeat_timeout'),
            coalesce((v_options->>'priority')::integer, 0), v_key, v_now,
            durable.text_list(v_options->'tags', 'tags'), nullif(v_options->>'partition_key', ''),
            v_parent, v_deps, v_ukey,
            nullif(v_options->'cancellation', 'null'), v_at,
            durable.first_cancel_at(nullif(v_options->'cancellation', 'null'), v_at),
            coalesce((v_options->>'on_discard')::boolean, false), v_policy,
            nullif(v_options->>'concurrency_key', ''),
            durable.reason_class_list(v_options->'retry_on', 'retry_on'),
            durable.reason_class_list(v_options->'discard_on', 'discard_on'))
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
    elsif v_orphaned then
        perform durable.cancel_locked_task(
            v_task,
            jsonb_build_object('type', 'ParentCancelled',
                               'message', format('parent task %s was cancelled', v_parent),
                               'parent', v_parent),
            v_now);
    end if;
    return query select v_task.task_id, v_run_id, 1, true;
end $$;

-- Spawn many tasks in one statement. p_items: [{"task_name": .., "params": .., "options": {..}}].
-- Returns one row per item, in order. The batch's tasks and runs are keyed in the batch's order
-- (durable.uuidv7_seq) and share a millisecond and an available_at, so claim's order (priority,
-- available_at, run_id) is the batch's order (FIFO). Three paths:
-- * items with unique, depends_on or parent_task_id go through spawn() one by one;
-- * a batch whose items carry no options at all (the common bulk enqueue) takes a plain path:
--   every column has its default, no idempotency key can conflict, so nothing is read out of
--   the options and no task is looked up;
-- * otherwise, options an item does not carry cost nothing: the start time, timeout and
--   heartbeat timeout are parsed (by plpgsql helpers) only for the items that set them; and a
--   batch whose items all made new tasks returns their ids without looking up existing ones.
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
    v_bad     boolean;
    v_one_by_one boolean;
    v_plain   boolean;
    v_bad_policy boolean;
begin
    perform durable.check_queue(p_queue);
    if jsonb_typeof(p_items) is distinct from 'array' then
        raise exception 'items must be a JSON array' using errcode = 'DU005';
    end if;
    -- one pass over the items validates their names and picks the path
    select bool_or(coalesce(length(i->>'task_name'), 0) not between 1 and 255),
           bool_or(i->'options' ? 'unique' or i->'options' ? 'depends_on'
                   or i->'options' ? 'parent_task_id'),
           bool_and(coalesce(i->'options', '{}') = '{}'),
           bool_or(coalesce(i->'options'->>'on_parent_cancel', 'cancel')
                   not in ('cancel', 'abandon'))
      into v_bad, v_one_by_one, v_plain, v_bad_policy
      from jsonb_array_elements(p_items) i;
    if v_bad then
        raise exception 'task name must be 1 to 255 characters' using errcode = 'DU005';
    end if;
    if v_bad_policy then
        perform durable.check_parent_policy(
            (select i->'options'->>'on_parent_cancel' from jsonb_array_elements(p_items) i
              where coalesce(i->'options'->>'on_parent_cancel', 'cancel')
                    not in ('cancel', 'abandon')
              limit 1));
    end if;
    if v_plain then
        with items as materialized (
            select x.ord, x.i->>'task_name' as task_name,
                   coalesce(x.i->'params', 'null') as params,
                   durable.uuidv7_seq(v_ms, x.ord) as new_id,
                   durable.uuidv7_seq(v_ms, x.ord) as new_run
              from jsonb_array_elements(p_items) with ordinality as x(i, ord)
        ), ins as (
            insert into durable.tasks (task_id, queue, task_name, params, created_at, scheduled_at)
            select i.new_id, p_queue, i.task_name, i.params, v_now, v_now
              from items i order by i.ord
        ), rins as (
            insert into durable.runs (run_id, task_id, queue, attempt, state, available_at,
                                      created_at, task_name)
            select i.new_run, i.new_id, p_queue, 1, 'pending', v_now, v_now, i.task_name
              from items i order by i.ord
        )
        select array_agg(i.new_id order by i.ord), array_agg(i.new_run order by i.ord)
          into v_ids, v_runs
          from items i;
        v_ready := cardinality(v_ids);  -- every item is due now, and every one a new task
    elsif v_one_by_one then
        return query
            select s.* from jsonb_array_elements(p_items) with ordinality as x(i, ord)
             cross join lateral durable.spawn(p_queue, x.i->>'task_name', x.i->'params',
                                              coalesce(x.i->'options', '{}')) s
             order by x.ord;
        return;
    else
        with items as materialized (
            select x.ord, x.i->>'task_name' as task_name,
                   coalesce(x.i->'params', 'null') as params,
                   coalesce(x.i->'options', '{}') as o, durable.uuidv7_seq(v_ms, x.ord) as new_id,
                   durable.uuidv7_seq(v_ms, x.ord) as new_run
              from jsonb_array_elements(p_items) with ordinality as x(i, ord)
        ), prepared as (
            select i.*, i.o->>'idempotency_key' as key,
                   coalesce((i.o->>'priority')::integer, 0) as prio,
                   case when i.o ? 'at' or i.o ? 'delay' then durable.start_time(i.o, v_now)
                        else v_now end as available_at,
                   nullif(i.o->'cancellation', 'null') as cancellation
              from items i
        ), keys as (
            -- the keys over hot and finished tasks (task_keys): an item whose key is taken
            -- makes no task
            insert into durable.task_keys (queue, idempotency_key, task_id)
            select p_queue, p.key, p.new_id from prepared p
             where p.key is not null order by p.ord
            on conflict do nothing
            returning task_id
        ), ins as (
            insert into durable.tasks (task_id, queue, task_name, params, headers, max_attempts,
                                       retry, timeout_s, heartbeat_timeout_s, priority,
                                       idempotency_key, created_at, tags, partition_key,
                                       parent_task_id, cancellation, scheduled_at, cancel_at,
                                       discard_hook, on_parent_cancel, concurrency_key,
                                       retry_on, discard_on)
            select p.new_id, p_queue, p.task_name, p.params, coalesce(p.o->'headers', '{}'),
                   coalesce((p.o->>'max_attempts')::integer, 3), p.o->'retry',
                   case when p.o ? 'timeout' then durable.seconds(p.o->'timeout', 'timeout') end,
                   case when p.o ? 'heartbeat_timeout'
                        then durable.seconds(p.o->'heartbeat_timeout', 'heartbeat_timeout') end,
                   p.prio, p.key, v_now,
                   case when p.o ? 'tags' then durable.text_list(p.o->'tags', 'tags')
                        else '{}' end,
                   nullif(p.o->>'partition_key', ''), (p.o->>'parent_task_id')::uuid,
                   p.cancellation, p.available_at,
                   case when p.cancellation is not null
                        then durable.first_cancel_at(p.cancellation, p.available_at) end,
                   coalesce((p.o->>'on_discard')::boolean, false),
                   coalesce(p.o->>'on_parent_cancel', 'cancel'),
                   nullif(p.o->>'concurrency_key', ''),
                   durable.reason_class_list(p.o->'retry_on', 'retry_on'),
                   durable.reason_class_list(p.o->'discard_on', 'discard_on')
              from prepared p
             where p.key is null or p.new_id in (select k.task_id from keys k)
             order by p.ord
            on conflict (queue, idempotency_key) where idempotency_key is not null do nothing
            returning task_id
        ), rins as (
            insert into durable.runs (run_id, task_id, queue, attempt, priority, partition_key,
                                      state, available_at, created_at, task_name,
                                      concurrency_key)
            select p.new_run, p.new_id, p_queue, 1, p.prio, nullif(p.o->>'partition_key', ''),
                   'pending', p.available_at, v_now, p.task_name,
                   nullif(p.o->>'concurrency_key', '')
              from prepared p join ins on ins.task_id = p.new_id
            returning available_at
        )
        select array_agg(p.new_id order by p.ord), array_agg(p.new_run order by p.ord),
               array_agg(p.key order by p.ord), array_agg(ins.task_id is not null order by p.ord),
               (select count(*) from rins where rins.available_at <= v_now)
          into v_ids, v_runs, v_keys, v_created, v_ready
          from prepared p left join ins on ins.task_id = p.new_id;
    end if;
    if v_ready > 0 then
        perform pg_notify('durable_work', p_queue);
    end if;
    -- every item made a new task (the plain path leaves v_created null): nothing to look up
    if v_created is null or false <> all(v_created) then
        return query
            select u.id, u.rid, 1, true
              from unnest(v_ids, v_runs) with ordinality as u(id, rid, ord)
             order by u.ord;
        return;
    end if;
    return query
        select case when u.c then u.id else t.task_id end,
               case when u.c then u.rid else r.run_id end,
               case when u.c then 1 else t.attempt end,
               u.c
          from unnest(v_ids, v_runs, v_keys, v_created) with ordinality as u(id, rid, key, c, ord)
          left join durable.task_keys k on not u.c and k.queue = p_queue
                                       and k.idempotency_key = u.key
          left join durable.all_tasks t on t.task_id = k.task_id
          left join lateral (select r.run_id from durable.all_runs r where r.task_id = t.task_id
                              order by r.created_at desc, r.run_id desc limit 1) r on not u.c
         order by u.ord;
end $$;

-- What makes two spawns duplicates under p_unique: the task name and the params (or only the
-- params keys that unique.keys lists), hashed.
create or replace function durable.unique_key(p_task_name text, p_params jsonb, p_unique jsonb)
returns text
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
        raise exception 'unique.keys must be a list of params keys, got %', v_keys
            using errcode = 'DU005';
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
create or replace function durable.apply_duplicate(p_task durable.tasks, p_params jsonb,
                                                   p_options jsonb, p_now timestamptz)
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
                    update durable.tasks t
                       set priority = coalesce((p_options->>'priority')::integer, 0)
                     where t.task_id = p_task.task_id;
                    update durable.runs r
                       set priority = coalesce((p_options->>'priority')::integer, 0)
                     where r.run_id = v_run.run_id;
                when 'scheduled_at' then
                    update durable.tasks t set scheduled_at = durable.start_time(p_options, p_now)
                     where t.task_id = p_task.task_id;
                    if not exists (select 1 from durable.task_dependencies d
                                    where d.task_id = p_task.task_id) then
                        update durable.runs r
                           set available_at = durable.start_time(p_options, p_now)
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
               set available_at = greatest(r.available_at,
                                           p_now + make_interval(secs => v_debounce))
             where r.run_id = v_run.run_id;
        end if;
        -- a start moved later moves the moment a max_delay policy applies with it
        update durable.tasks t
           set cancel_at = durable.first_cancel_at(t.cancellation, t.scheduled_at)
         where t.task_id = p_task.task_id and t.cancellation is not null;
    end if;
    return query
        select p_task.task_id, r.run_id, p_task.attempt, false
          from (select r.run_id from durable.all_runs r where r.task_id = p_task.task_id
                 order by r.created_at desc, r.run_id desc limit 1) r;
end $$;
