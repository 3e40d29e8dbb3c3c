-- spawn_many keys a batch's tasks and runs in the batch's order: UUIDv7 with the item's position
-- in the 24 bits after the millisecond (rand_a, then the top of rand_b) and 50 random bits below.
-- Runs of one batch share a millisecond and an available_at, so claim's order (priority,
-- available_at, run_id) is now the batch's order (FIFO). The random part comes from random(), one
-- cheap call per key instead of a strong-random UUID (gen_random_uuid, ~2 us) per key: keys need
-- uniqueness, not secrecy (two keys collide only with the same millisecond, position and 50 bits).

create function durable.uuidv7_seq(p_ms bigint, p_seq bigint) returns uuid
language sql volatile as $$
    select encode(int8send((p_ms << 16) | 28672 | ((p_seq >> 12) & 4095))  -- version 7
               || int8send((-9223372036854775808)::bigint                   -- variant 10
                           | ((p_seq & 4095) << 50)
                           | (random() * 1125899906842624)::bigint),        -- 2^50
                  'hex')::uuid
$$;

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
    with items as materialized (
        select x.ord, x.i->>'task_name' as task_name, coalesce(x.i->'params', 'null') as params,
               coalesce(x.i->'options', '{}') as o, durable.uuidv7_seq(v_ms, x.ord) as new_id,
               durable.uuidv7_seq(v_ms, x.ord) as new_run
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

revoke execute on function durable.uuidv7_seq(bigint, bigint) from public;
