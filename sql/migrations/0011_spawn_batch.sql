-- 0011: spawn_batch, the fast form of spawn_many for a batch whose items share their options
-- (all but the idempotency key): typed arrays instead of one JSON document, and the options read
-- once instead of once per item. About a third less time in SQL for 1,000 tasks than spawn_many.
-- Options with 'unique' or 'depends_on' are refused (DU005): spawn_many handles those per item.

create function durable.spawn_batch(p_queue text, p_task_names text[], p_params jsonb[],
                                    p_keys text[], p_options jsonb default '{}')
returns table (task_id uuid, run_id uuid, attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now       timestamptz := durable.now();
    v_ms        bigint := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    v_o         jsonb := coalesce(p_options, '{}');
    v_n         integer := coalesce(array_length(p_task_names, 1), 0);
    v_at        timestamptz;
    v_prio      integer;
    v_part      text;
    v_cancel    jsonb;
    v_ids       uuid[];
    v_runs      uuid[];
    v_created   boolean[];
    v_inserted  integer;
begin
    perform durable.check_queue(p_queue);
    if jsonb_typeof(v_o) is distinct from 'object' then
        raise exception 'options must be a JSON object' using errcode = 'DU005';
    end if;
    if v_o ? 'unique' or v_o ? 'depends_on' or v_o ? 'idempotency_key' then
        raise exception 'spawn_batch takes no unique, depends_on or idempotency_key option (keys go in p_keys; use spawn_many)'
            using errcode = 'DU005';
    end if;
    if coalesce(array_length(p_params, 1), 0) <> v_n
       or (p_keys is not null and coalesce(array_length(p_keys, 1), 0) <> v_n) then
        raise exception 'task names, params and keys must be arrays of one length' using errcode = 'DU005';
    end if;
    if v_n = 0 then
        return;
    end if;
    if exists (select 1 from unnest(p_task_names) n where coalesce(length(n), 0) not between 1 and 255) then
        raise exception 'task name must be 1 to 255 characters' using errcode = 'DU005';
    end if;
    v_at := durable.start_time(v_o, v_now);
    v_prio := coalesce((v_o->>'priority')::integer, 0);
    v_part := nullif(v_o->>'partition_key', '');
    v_cancel := nullif(v_o->'cancellation', 'null');
    with items as materialized (
        select u.ord, u.name, coalesce(u.params, 'null') as params, u.key,
               durable.uuidv7_seq(v_ms, u.ord) as new_id, durable.uuidv7_seq(v_ms, u.ord) as new_run
          from unnest(p_task_names, p_params, coalesce(p_keys, array_fill(null::text, array[v_n])))
               with ordinality as u(name, params, key, ord)
    ), ins as (
        insert into durable.tasks (task_id, queue, task_name, params, headers, max_attempts, retry,
                                   timeout_s, heartbeat_timeout_s, priority, idempotency_key,
                                   created_at, tags, partition_key, parent_task_id, cancellation,
                                   scheduled_at, cancel_at, discard_hook)
        select i.new_id, p_queue, i.name, i.params, coalesce(v_o->'headers', '{}'),
               coalesce((v_o->>'max_attempts')::integer, 3), v_o->'retry',
               durable.seconds(v_o->'timeout', 'timeout'),
               durable.seconds(v_o->'heartbeat_timeout', 'heartbeat_timeout'), v_prio, i.key, v_now,
               case when v_o ? 'tags' then durable.text_list(v_o->'tags', 'tags') else '{}' end,
               v_part, (v_o->>'parent_task_id')::uuid, v_cancel, v_at,
               case when v_cancel is not null then durable.first_cancel_at(v_cancel, v_at) end,
               coalesce((v_o->>'on_discard')::boolean, false)
          from items i order by i.ord
        on conflict (queue, idempotency_key) where idempotency_key is not null do nothing
        returning task_id
    ), rins as (
        insert into durable.runs (run_id, task_id, queue, attempt, priority, partition_key, state,
                                  available_at, created_at)
        select i.new_run, i.new_id, p_queue, 1, v_prio, v_part, 'pending', v_at, v_now
          from items i join ins on ins.task_id = i.new_id
        returning 1
    )
    select array_agg(i.new_id order by i.ord), array_agg(i.new_run order by i.ord),
           array_agg(ins.task_id is not null order by i.ord), (select count(*) from rins)
      into v_ids, v_runs, v_created, v_inserted
      from items i left join ins on ins.task_id = i.new_id;
    if v_inserted > 0 and v_at <= v_now then
        perform pg_notify('durable_work', p_queue);
    end if;
    -- a second statement: the duplicates' tasks (inserted by this batch too) are visible now
    return query
        select case when u.c then u.id else t.task_id end,
               case when u.c then u.rid else r.run_id end,
               case when u.c then 1 else t.attempt end,
               u.c
          from unnest(v_ids, v_runs, v_created, p_keys) with ordinality as u(id, rid, c, key, ord)
          left join durable.tasks t on not u.c and t.queue = p_queue and t.idempotency_key = u.key
          left join lateral (select r.run_id from durable.runs r where r.task_id = t.task_id
                              order by r.created_at desc, r.run_id desc limit 1) r on not u.c
         order by u.ord;
end $$;

revoke execute on all functions in schema durable from public;
select durable.grant_worker_privileges();
