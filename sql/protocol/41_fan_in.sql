-- Fan-out and fan-in: a run that waits for many tasks at once (ctx.gather: it parks once and
-- wakes once, when the last of them ended), batches of tasks with a callback spawned when every
-- member ended, and the results of a task's dependencies.

-- ---------------------------------------------------------------------------------------------
-- waiting for several tasks

-- The outcomes of tasks p_task_ids, in that order: {task_id, state, result, failure} each (the
-- failure of a failed or cancelled task only).
create or replace function durable.task_outcomes(p_task_ids uuid[]) returns jsonb
language sql stable as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'task_id', t.task_id, 'state', durable.state_of(t.state, t.task_id),
               'result', t.result,
               'failure', case when t.state in ('failed', 'cancelled') then t.failure end)
             order by c.ord), '[]')
      from unnest(p_task_ids) with ordinality as c(id, ord)
      join durable.all_tasks t on t.task_id = c.id
$$;

-- Wait for every task of p_children to end, as step p_step of the run: status 'done' with their
-- outcomes in the order given (durable.task_outcomes), 'timeout', or 'suspended': the run parked
-- until the last of them ended (it wakes once, however many they are) or the timeout. The wait
-- keeps an edge per child still running (durable.wait_children); each child's end removes its
-- edge, and the end that removes the last records the outcomes and wakes the run.
create or replace function durable.await_tasks(p_queue text, p_run_id uuid, p_step text,
                                               p_children uuid[], p_timeout double precision)
returns table (status text, outcomes jsonb)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now     timestamptz := durable.now();
    v_run     durable.runs;
    v_value   jsonb;
    v_missing uuid;
    v_open    uuid[];
    v_status  text;
begin
    if p_step is null or length(p_step) = 0 then
        raise exception 'step name must not be empty' using errcode = 'DU005';
    end if;
    if coalesce(cardinality(p_children), 0) = 0 or array_position(p_children, null) is not null
    then
        raise exception 'give at least one task id to wait for, and no null'
            using errcode = 'DU005';
    end if;
    if p_timeout < 0 then
        raise exception 'timeout must be non-negative, got %', p_timeout using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    select k.value into v_value from durable.checkpoints k
     where k.task_id = v_run.task_id and k.step_name = p_step;
    if found then
        return query select case when v_value ? 'timed_out' then 'timeout' else 'done' end,
                            v_value->'outcomes';
        return;
    end if;
    -- the children's ends (each locks its row) either happened or see this wait's edges
    v_missing := durable.share_tasks(p_children);
    if v_missing is not null then
        raise exception 'no task %', v_missing using errcode = 'DU002';
    end if;
    v_open := array(select t.task_id from durable.tasks t
                     where t.task_id = any(p_children) and t.state = 'pending');
    if cardinality(v_open) = 0 then
        v_value := jsonb_build_object('outcomes', durable.task_outcomes(p_children));
        perform durable.record_step(v_run.task_id, p_step, v_value, p_run_id, v_now);
        delete from durable.waits w where w.task_id = v_run.task_id and w.step_name = p_step;
        delete from durable.wait_children c
         where c.task_id = v_run.task_id and c.step_name = p_step;
        return query select 'done'::text, v_value->'outcomes';
        return;
    end if;
    if not exists (select 1 from durable.waits w
                    where w.task_id = v_run.task_id and w.step_name = p_step) then
        insert into durable.waits (task_id, step_name, run_id, child_task_ids, timeout_at,
                                   created_at)
        values (v_run.task_id, p_step, p_run_id, p_children,
                v_now + make_interval(secs => p_timeout), v_now);
        insert into durable.wait_children (task_id, step_name, child_task_id)
        select v_run.task_id, p_step, c from unnest(v_open) as c;
    end if;
    v_status := durable.park_on_wait(v_run, p_step, null, null, p_timeout, v_now);
    if v_status = 'timeout' then
        delete from durable.wait_children c
         where c.task_id = v_run.task_id and c.step_name = p_step;
    end if;
    return query select v_status, null::jsonb;
end $$;

-- Ended tasks remove their edges from the waits for several tasks; a wait whose last edge went
-- gets the outcomes of all its tasks as its step's checkpoint, and its run wakes. The waiting
-- task's lock orders the ends of its tasks: of two ends that remove the last two edges, the one
-- that locks it second sees no edge left.
create or replace function durable.deliver_gathered_results(p_task_ids uuid[],
                                                            p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_tasks uuid[];
    v_steps text[];
    v_wait  durable.waits;
begin
    with gone as (
        delete from durable.wait_children c where c.child_task_id = any(p_task_ids)
        returning c.task_id, c.step_name
    )
    select array_agg(g.task_id order by g.task_id, g.step_name),
           array_agg(g.step_name order by g.task_id, g.step_name)
      into v_tasks, v_steps
      from (select distinct gone.task_id, gone.step_name from gone) g;
    for i in 1 .. coalesce(cardinality(v_tasks), 0) loop
        perform 1 from durable.tasks t where t.task_id = v_tasks[i] for no key update;
        continue when exists (select 1 from durable.wait_children c
                               where c.task_id = v_tasks[i] and c.step_name = v_steps[i]);
        delete from durable.waits w where w.task_id = v_tasks[i] and w.step_name = v_steps[i]
        returning * into v_wait;
        continue when not found;
        perform durable.record_step(
            v_wait.task_id, v_wait.step_name,
            jsonb_build_object('outcomes', durable.task_outcomes(v_wait.child_task_ids)),
            v_wait.run_id, p_now);
        perform durable.wake(v_wait.run_id, p_now);
    end loop;
end $$;

-- ---------------------------------------------------------------------------------------------
-- batches

-- Spawn a batch: every item of p_items ({queue, task_name, params, options}, spawned as
-- spawn_many would, per queue) is a member, and once every member ended one callback is spawned:
-- p_callbacks.on_complete when all of them completed, else p_callbacks.on_exhausted (each
-- {queue, task_name, params, options}, or absent: then none). A callback's params are {batch_id,
-- total, counts: {completed, failed, cancelled}, params: its own params}. p_options:
-- idempotency_key (a second batch with the key returns the first). Returns the batch's id,
-- whether it was created, and its members in the order given.
create or replace function durable.spawn_batch(p_items jsonb, p_callbacks jsonb,
                                               p_options jsonb default '{}')
returns table (batch_id uuid, batch_created boolean, task_id uuid, run_id uuid,
               attempt integer, created boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_now       timestamptz := durable.now();
    v_callbacks jsonb := coalesce(p_callbacks, '{}');
    v_key       text := nullif(coalesce(p_options, '{}')->>'idempotency_key', '');
    v_batch     uuid;
    v_name      text;
    v_callback  jsonb;
    v_queue     text;
    v_sub       jsonb;
    v_pos       bigint[];
    v_positions bigint[] := '{}';
    v_tasks     uuid[] := '{}';
    v_runs      uuid[] := '{}';
    v_attempts  integer[] := '{}';
    v_created   boolean[] := '{}';
begin
    if jsonb_typeof(p_items) is distinct from 'array' or jsonb_array_length(p_items) = 0 then
        raise exception 'a batch needs a JSON array of at least one item' using errcode = 'DU005';
    end if;
    if jsonb_typeof(v_callbacks) <> 'object'
       or exists (select 1 from jsonb_object_keys(v_callbacks) k
                   where k not in ('on_complete', 'on_exhausted')) then
        raise exception 'callbacks must be an object of on_complete and on_exhausted'
            using errcode = 'DU005';
    end if;
    foreach v_name in array array['on_complete', 'on_exhausted'] loop
        v_callback := nullif(v_callbacks->v_name, 'null');
        continue when v_callback is null;
        perform durable.check_queue(v_callback->>'queue');
        if coalesce(length(v_callback->>'task_name'), 0) not between 1 and 255 then
            raise exception '% task name must be 1 to 255 characters', v_name
                using errcode = 'DU005';
        end if;
        if v_callback->'options' ?| array['depends_on', 'unique', 'idempotency_key'] then
            raise exception '% cannot have depends_on, unique or an idempotency key (the '
                            'batch spawns it once)', v_name using errcode = 'DU005';
        end if;
    end loop;
    if v_key is not null then
        perform pg_advisory_xact_lock(hashtextextended('durable.batch:' || v_key, 0));
        select b.batch_id into v_batch from durable.batches b where b.idempotency_key = v_key;
        if found then
            return query
                select v_batch, false, m.task_id, r.run_id, t.attempt, false
                  from durable.batch_members m
                  join durable.all_tasks t on t.task_id = m.task_id
                  left join lateral (select r.run_id from durable.all_runs r
                                      where r.task_id = t.task_id
                                      order by r.created_at desc, r.run_id desc limit 1) r on true
                 where m.batch_id = v_batch
                 order by m.position;
            return;
        end if;
    end if;

    v_batch := durable.uuidv7();
    insert into durable.batches (batch_id, idempotency_key, callbacks, total, created_at)
    values (v_batch, v_key, v_callbacks, jsonb_array_length(p_items), v_now);
    for v_queue in
        select distinct x.i->>'queue' from jsonb_array_elements(p_items) as x(i)
    loop
        perform durable.check_queue(v_queue);
        select jsonb_agg(x.i - 'queue' order by x.ord), array_agg(x.ord order by x.ord)
          into v_sub, v_pos
          from jsonb_array_elements(p_items) with ordinality as x(i, ord)
         where x.i->>'queue' = v_queue;
        select v_positions || array_agg(p.ord order by s.n),
               v_tasks || array_agg(s.task_id order by s.n),
               v_runs || array_agg(s.run_id order by s.n),
               v_attempts || array_agg(s.attempt order by s.n),
               v_created || array_agg(s.created order by s.n)
          into v_positions, v_tasks, v_runs, v_attempts, v_created
          from durable.spawn_many(v_queue, v_sub)
               with ordinality as s(task_id, run_id, attempt, created, n)
          join unnest(v_pos) with ordinality as p(ord, n) on p.n = s.n;
    end loop;
    insert into durable.batch_members (batch_id, position, task_id)
    select v_batch, u.ord, u.id from unnest(v_positions, v_tasks) as u(ord, id);
    -- a member that had ended already (an existing task found by its idempotency key, or one
    -- cancelled at once by a failed dependency) counts now; the share locks wait for the ends
    -- in flight of the members found, and make later ones see this batch
    perform durable.share_tasks(array(select u.id from unnest(v_tasks, v_created) as u(id, c)
                                       where not u.c));
    update durable.batch_members m set ended_state = t.state
      from durable.all_tasks t
     where m.batch_id = v_batch and t.task_id = m.task_id and t.state <> 'pending';
    perform durable.settle_batch(v_batch, v_now);
    return query
        select v_batch, true, u.id, u.rid, u.att, u.c
          from unnest(v_positions, v_tasks, v_runs, v_attempts, v_created)
               as u(ord, id, rid, att, c)
         order by u.ord;
end $$;

-- Members of batches that ended count once (their first end): a batch whose last member ended
-- is settled.
create or replace function durable.count_batch_members(p_task_ids uuid[], p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_batches uuid[];
    v_batch   uuid;
begin
    with ended as (
        update durable.batch_members m set ended_state = t.state
          from durable.tasks t
         where m.task_id = any(p_task_ids) and m.ended_state is null
           and t.task_id = m.task_id and t.state <> 'pending'
        returning m.batch_id
    )
    select array_agg(distinct e.batch_id order by e.batch_id) into v_batches from ended e;
    foreach v_batch in array coalesce(v_batches, '{}') loop
        perform durable.settle_batch(v_batch, p_now);
    end loop;
end $$;

-- Once every member of batch p_batch_id ended: record the counts per end state and spawn its
-- callback, once (the batch's lock orders the ends of its members: of two ends that count the
-- last two members, the one that locks it second sees none left; its idempotency key guards it
-- too). A callback that cannot be spawned is recorded in callback_error, and the ends that
-- settled the batch still commit.
create or replace function durable.settle_batch(p_batch_id uuid, p_now timestamptz)
returns void
language plpgsql as $$
declare
    v_batch    durable.batches;
    v_counts   jsonb;
    v_callback jsonb;
    v_task_id  uuid;
begin
    select * into v_batch from durable.batches b where b.batch_id = p_batch_id for update;
    if not found or v_batch.finished_at is not null
       or exists (select 1 from durable.batch_members m
                   where m.batch_id = p_batch_id and m.ended_state is null) then
        return;
    end if;
    select jsonb_build_object(
               'completed', count(*) filter (where m.ended_state = 'completed'),
               'failed', count(*) filter (where m.ended_state = 'failed'),
               'cancelled', count(*) filter (where m.ended_state = 'cancelled'))
      into v_counts
      from durable.batch_members m where m.batch_id = p_batch_id;
    v_callback := nullif(
        case when (v_counts->>'completed')::integer = v_batch.total
             then v_batch.callbacks->'on_complete'
             else v_batch.callbacks->'on_exhausted' end, 'null');
    update durable.batches b set counts = v_counts, finished_at = p_now
     where b.batch_id = p_batch_id;
    if v_callback is null then
        return;
    end if;
    begin
        select s.task_id into v_task_id
          from durable.spawn(
                   v_callback->>'queue', v_callback->>'task_name',
                   jsonb_build_object('batch_id', p_batch_id, 'total', v_batch.total,
                                      'counts', v_counts,
                                      'params', coalesce(v_callback->'params', 'null')),
                   coalesce(v_callback->'options', '{}')
                       || jsonb_build_object('idempotency_key',
                                             format('durable:batch:%s', p_batch_id))) s;
        update durable.batches b set callback_task_id = v_task_id
         where b.batch_id = p_batch_id;
    exception when others then
        update durable.batches b
           set callback_error = jsonb_build_object('sqlstate', sqlstate, 'message', sqlerrm)
         where b.batch_id = p_batch_id;
    end;
end $$;

-- A batch as one JSON document: its callbacks, how many members it has, how many are still
-- pending and how many ended in each state, its callback's task once spawned (or why it could
-- not be), and when it was created and finished. DU006 for an unknown batch.
create or replace function durable.get_batch(p_batch_id uuid) returns jsonb
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_batch durable.batches;
begin
    select * into v_batch from durable.batches b where b.batch_id = p_batch_id;
    if not found then
        raise exception 'no batch %', p_batch_id using errcode = 'DU006';
    end if;
    return to_jsonb(v_batch) || (
        select jsonb_build_object(
                   'pending', count(*) filter (where m.ended_state is null),
                   'counts', jsonb_build_object(
                       'completed', count(*) filter (where m.ended_state = 'completed'),
                       'failed', count(*) filter (where m.ended_state = 'failed'),
                       'cancelled', count(*) filter (where m.ended_state = 'cancelled')))
          from durable.batch_members m where m.batch_id = p_batch_id);
end $$;

-- ---------------------------------------------------------------------------------------------
-- dependencies' results

-- The dependencies of task p_task_id (options.depends_on), in the order they were spawned (their
-- ids are time-ordered), with their state and, for a completed one, its result. A task runs only
-- once all of them completed, so its handler reads their results here. A dependency that
-- retention pruned is left out.
create or replace function durable.get_dependency_results(p_queue text, p_task_id uuid)
returns table (task_id uuid, task_name text, state text, result jsonb)
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
    v_task durable.tasks;
begin
    select * into v_task from durable.all_tasks t
     where t.task_id = p_task_id and (p_queue is null or t.queue = p_queue);
    if not found then
        raise exception 'no task %', p_task_id using errcode = 'DU002';
    end if;
    return query
        select t.task_id, t.task_name, durable.state_of(t.state, t.task_id),
               case when t.state = 'completed' then t.result end
          from durable.all_tasks t
         where t.task_id = any(coalesce(v_task.depends_on, '{}'))
         order by t.task_id;
end $$;
