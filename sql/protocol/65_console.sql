-- The operator's console: the task browser, the live depth of the queues, the workers, and the
-- flow over time. Each read costs what it shows, never the history: a page of the browser a few
-- index probes (sql/schema/0015_console.sql), the depth the live runs, a window of the flow its
-- minutes.
--
-- FLOW OVER TIME is kept per minute and queue in durable.flow_minutes: the runs that ended
-- (completed, failed — dead when they ended their task failed — and cancelled), the failed ones
-- per reason class, and histograms of start lag (from when a run could start to its start) and
-- run time (start to end of completed and failed runs). Workers call roll_up_flow() every few
-- seconds; it adds the runs that ended since durable.flow_rollup.rolled_up_to (one worker at a
-- time: the others skip). flow() reads the rolled-up minutes of a window and the few runs that
-- ended since the last rollup, so the console is live without a rollup per completion (a
-- counter row updated by every completion would serialize the workers on it).

-- ---------------------------------------------------------------------------------------------
-- helpers

-- The lowest UUIDv7 of millisecond p_at: task ids are UUIDv7, so a time bound on the spawn is a
-- bound on the key.
create or replace function durable.uuidv7_floor(p_at timestamptz) returns uuid
language sql immutable as $$
    select (lpad(to_hex(greatest(floor(extract(epoch from p_at) * 1000), 0)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- A histogram's bucket of a duration: bucket b holds [2^(b/2), 2^((b+1)/2)) milliseconds
-- (b 0 also holds less than a millisecond, b 55 everything from about 3 days on).
create or replace function durable.flow_bucket(p_duration interval) returns text
language sql immutable as $$
    select least(55, greatest(0, floor(2 * ln(greatest(extract(epoch from p_duration) * 1000,
                                                       1)::double precision) / ln(2))))
           ::integer::text
$$;

-- {value: how many times it occurs} of the non-null p_values.
create or replace function durable.tally(p_values text[]) returns jsonb
language sql immutable as $$
    select coalesce(jsonb_object_agg(x.v, x.n), '{}')
      from (select u.v, count(*) as n from unnest(p_values) as u(v)
             where u.v is not null group by u.v) x
$$;

-- The sum of tallies: {key: sum of its counts}.
create or replace function durable.add_tallies(p_tallies jsonb[]) returns jsonb
language sql immutable as $$
    select coalesce(jsonb_object_agg(x.k, x.n), '{}')
      from (select e.key as k, sum(e.value::bigint) as n
              from unnest(p_tallies) as u(t), jsonb_each_text(u.t) as e
             group by e.key) x
$$;

-- The flow of the runs that ended in [p_from, p_to), per minute and queue (see the top).
create or replace function durable.flow_of_runs(p_from timestamptz, p_to timestamptz)
returns table (minute timestamptz, queue text, completed bigint, failed bigint, dead bigint,
               cancelled bigint, failed_classes jsonb, lag_ms jsonb, run_ms jsonb)
language sql stable as $$
    select date_trunc('minute', e.finished_at), e.queue,
           count(*) filter (where e.state = 'completed'),
           count(*) filter (where e.state = 'failed'),
           count(*) filter (where e.dead),
           count(*) filter (where e.state = 'cancelled'),
           durable.tally(array_agg(durable.reason_class(e.failure_reason, e.error))
                             filter (where e.state = 'failed')),
           durable.tally(array_agg(durable.flow_bucket(e.started_at - e.available_at))
                             filter (where e.started_at >= e.available_at)),
           durable.tally(array_agg(durable.flow_bucket(e.finished_at - e.started_at))
                             filter (where e.started_at is not null
                                       and e.state in ('completed', 'failed')))
      from (select r.finished_at, r.queue, r.state, r.failure_reason, r.error, r.started_at,
                   r.available_at,
                   case when r.state = 'failed'
                        then exists (select 1 from durable.all_tasks t
                                      where t.task_id = r.task_id and t.state = 'failed'
                                        and t.failure->>'run_id' = r.run_id::text)
                        else false end as dead
              from durable.all_runs r
             where r.finished_at >= p_from and r.finished_at < p_to) e
     group by 1, 2
$$;

-- ---------------------------------------------------------------------------------------------
-- the task browser

-- A page of tasks, newest first (by task_id: UUIDv7), that match every filter given (null: not
-- filtered): queue, task name, state (a live state — pending, running, sleeping — is the live
-- run's, read from the runs; an end state the task's), all of p_tags, spawned in [p_since,
-- p_until) (by the task id's time), the task id, the idempotency key, params containing p_params
-- (jsonb @>). p_before is the last task id of the previous page (keyset pagination): the page
-- holds the next p_limit (1 to 1000) tasks below it. The query is put together from fixed
-- fragments, one per filter given, and every value travels as a parameter; each combination is
-- planned for its own index.
create or replace function durable.list_tasks(p_queue text default null,
                                              p_task_name text default null,
                                              p_state text default null,
                                              p_tags text[] default null,
                                              p_since timestamptz default null,
                                              p_until timestamptz default null,
                                              p_task_id uuid default null,
                                              p_idempotency_key text default null,
                                              p_params jsonb default null,
                                              p_before uuid default null,
                                              p_limit integer default 50)
returns table (task_id uuid, queue text, task_name text, state text, attempt integer,
               max_attempts integer, priority integer, created_at timestamptz,
               scheduled_at timestamptz, finished_at timestamptz, idempotency_key text,
               tags text[], failure_reason text, error_type text, progress double precision)
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
declare
    v_live boolean := p_state in ('pending', 'running', 'sleeping');
    v_key  text := case when p_state in ('pending', 'running', 'sleeping') then 'r' else 't' end;
    v_sql  text;
begin
    if p_queue is not null then
        perform durable.check_queue(p_queue);
    end if;
    if p_state is not null
       and p_state not in ('pending', 'running', 'sleeping', 'completed', 'failed',
                           'cancelled') then
        raise exception 'unknown task state %', quote_literal(p_state) using errcode = 'DU005';
    end if;
    if p_limit is null or p_limit < 1 or p_limit > 1000 then
        raise exception 'limit must be between 1 and 1000, got %', p_limit
            using errcode = 'DU005';
    end if;
    v_sql := 'select t.task_id, t.queue, t.task_name, '
          || case when v_live then 'r.state' else 'durable.state_of(t.state, t.task_id)' end
          || ', t.attempt, t.max_attempts, t.priority, t.created_at, t.scheduled_at,'
          || ' t.finished_at, t.idempotency_key, t.tags, t.failure->>''reason'','
          || ' t.failure->''error''->>''type'', (t.progress->>''pct'')::double precision from '
          || case when v_live
                  then 'durable.runs r join durable.tasks t on t.task_id = r.task_id'
                       || ' where r.state = $3'
                  else 'durable.all_tasks t where true' end;
    if p_state is not null and not v_live then
        v_sql := v_sql || ' and t.state = $3';
    end if;
    if p_queue is not null then
        v_sql := v_sql || ' and ' || v_key || '.queue = $1';
    end if;
    if p_task_name is not null then
        v_sql := v_sql || ' and t.task_name = $2';
    end if;
    if p_tags is not null then
        v_sql := v_sql || ' and t.tags @> $4';
        if cardinality(p_tags) > 0 then
            -- true of every task carrying a tag, and what lets the tags' index (partial: only
            -- tasks with tags) serve the filter
            v_sql := v_sql || ' and t.tags <> ''{}''';
        end if;
    end if;
    if p_since is not null then
        v_sql := v_sql || ' and ' || v_key || '.task_id >= durable.uuidv7_floor($5)';
    end if;
    if p_until is not null then
        v_sql := v_sql || ' and ' || v_key || '.task_id < durable.uuidv7_floor($6)';
    end if;
    if p_task_id is not null then
        v_sql := v_sql || ' and ' || v_key || '.task_id = $7';
    end if;
    if p_idempotency_key is not null then
        v_sql := v_sql || ' and t.idempotency_key = $8';
    end if;
    if p_params is not null then
        v_sql := v_sql || ' and t.params @> $9';
    end if;
    if p_before is not null then
        v_sql := v_sql || ' and ' || v_key || '.task_id < $10';
    end if;
    v_sql := v_sql || ' order by ' || v_key || '.task_id desc limit $11';
    return query execute v_sql
        using p_queue, p_task_name, p_state, p_tags, p_since, p_until, p_task_id,
              p_idempotency_key, p_params, p_before, p_limit;
end $$;

-- ---------------------------------------------------------------------------------------------
-- the queues, live

-- Per queue, its live runs only (never the finished history): how many tasks are pending,
-- running and sleeping, how many runs could start now (available: the true depth of the queue)
-- and for how many seconds the oldest of those could (on the database's clock).
create or replace function durable.queue_depth()
returns table (queue text, pending bigint, running bigint, sleeping bigint, available bigint,
               oldest_available_s double precision)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    with n as (select durable.now() as now)
    select r.queue,
           count(*) filter (where r.state = 'pending'),
           count(*) filter (where r.state = 'running'),
           count(*) filter (where r.state = 'sleeping'),
           count(*) filter (where r.state in ('pending', 'sleeping') and r.available_at <= n.now),
           extract(epoch from min(n.now) - min(r.available_at)
                                filter (where r.state in ('pending', 'sleeping')
                                          and r.available_at <= n.now))::double precision
      from durable.runs r cross join n
     where r.state in ('pending', 'running', 'sleeping')
     group by r.queue
     order by r.queue
$$;

-- ---------------------------------------------------------------------------------------------
-- the workers

-- The workers alive, and those gone (stopped, or their liveness lapsed) within the last
-- p_gone_within seconds: where they run, their queues, their slots as they last said (busy,
-- claimed ahead), when they were last seen and how many runs they hold. Alive first.
create or replace function durable.list_workers(p_gone_within double precision default 3600)
returns table (worker_id text, host text, pid integer, queues text[], started_at timestamptz,
               last_seen_at timestamptz, expires_at timestamptz, stopped_at timestamptz,
               alive boolean, concurrency integer, busy integer, claimed_ahead integer,
               stats_at timestamptz, running bigint)
language sql stable
security definer set search_path = pg_catalog, pg_temp as $$
    with n as (select durable.now() as now),
    held as (select r.claimed_by, count(*) as running from durable.runs r
              where r.state = 'running' group by r.claimed_by)
    select w.worker_id, w.host, w.pid, w.queues, w.started_at, w.last_seen_at, w.expires_at,
           w.stopped_at, w.stopped_at is null and w.expires_at > n.now, w.concurrency, w.busy,
           w.claimed_ahead, w.stats_at, coalesce(h.running, 0)
      from durable.workers w cross join n
      left join held h on h.claimed_by = w.worker_id
     where coalesce(w.stopped_at, w.expires_at)
           > n.now - make_interval(secs => greatest(coalesce(p_gone_within, 0), 0))
     order by w.stopped_at is null and w.expires_at > n.now desc, w.started_at desc, w.worker_id
$$;

-- ---------------------------------------------------------------------------------------------
-- flow over time

-- Add the runs that ended since the last rollup to durable.flow_minutes, up to 10 seconds ago
-- (a run's end is the time its statement started, committed a moment later) and at most
-- p_max_minutes per call; drop minutes older than 8 days. A rollup that another worker holds
-- is skipped. Returns how many (minute, queue) rows were added to.
create or replace function durable.roll_up_flow(p_max_minutes integer default 60)
returns integer
language plpgsql
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
declare
    v_now  timestamptz := durable.now();
    v_from timestamptz;
    v_to   timestamptz;
    v_rows integer;
begin
    select f.rolled_up_to into v_from from durable.flow_rollup f for update skip locked;
    if not found then
        return 0;
    end if;
    v_from := greatest(v_from, v_now - interval '8 days');
    -- a stretch without runs ending (no worker for a while) is skipped in one step
    v_from := greatest(v_from, least(v_now - interval '10 seconds',
                                     (select min(r.finished_at) from durable.all_runs r
                                       where r.finished_at >= v_from)));
    v_to := greatest(v_from,
                     least(v_now - interval '10 seconds',
                           v_from + make_interval(mins => greatest(coalesce(p_max_minutes, 60),
                                                                   1))));
    insert into durable.flow_minutes as m (minute, queue, completed, failed, dead, cancelled,
                                           failed_classes, lag_ms, run_ms)
    select * from durable.flow_of_runs(v_from, v_to)
    on conflict (minute, queue) do update
       set completed = m.completed + excluded.completed,
           failed = m.failed + excluded.failed,
           dead = m.dead + excluded.dead,
           cancelled = m.cancelled + excluded.cancelled,
           failed_classes = durable.add_tallies(array[m.failed_classes, excluded.failed_classes]),
           lag_ms = durable.add_tallies(array[m.lag_ms, excluded.lag_ms]),
           run_ms = durable.add_tallies(array[m.run_ms, excluded.run_ms]);
    get diagnostics v_rows = row_count;
    -- a quiet stretch moves the mark too: the console's live tail stays short
    update durable.flow_rollup set rolled_up_to = v_to;
    delete from durable.flow_minutes m where m.minute < v_now - interval '8 days';
    return v_rows;
end $$;

-- The runs that ended in [p_since, now], per minute and queue: the rolled-up minutes, then the
-- runs that ended since the last rollup, read live.
create or replace function durable.flow_parts(p_since timestamptz)
returns table (minute timestamptz, queue text, completed bigint, failed bigint, dead bigint,
               cancelled bigint, failed_classes jsonb, lag_ms jsonb, run_ms jsonb)
language sql stable as $$
    select m.minute, m.queue, m.completed::bigint, m.failed::bigint, m.dead::bigint,
           m.cancelled::bigint, m.failed_classes, m.lag_ms, m.run_ms
      from durable.flow_minutes m
     where m.minute >= date_trunc('minute', p_since)
    union all
    select x.* from durable.flow_of_runs(
        greatest(coalesce((select f.rolled_up_to from durable.flow_rollup f), '-infinity'),
                 date_trunc('minute', p_since)),
        'infinity') x
$$;

-- The flow since p_since in steps of p_step_s seconds (a whole number of minutes, from the
-- epoch), per step and queue, oldest first: counts and tallies summed, the tallies in one pass
-- over all their entries.
create or replace function durable.flow(p_since timestamptz, p_step_s integer default 60)
returns table (minute timestamptz, queue text, completed bigint, failed bigint, dead bigint,
               cancelled bigint, failed_classes jsonb, lag_ms jsonb, run_ms jsonb)
language plpgsql stable
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
#variable_conflict use_column
begin
    if p_step_s is null or p_step_s < 60 or p_step_s % 60 <> 0 then
        raise exception 'step must be a whole number of minutes, got % seconds', p_step_s
            using errcode = 'DU005';
    end if;
    return query
    with parts as (
        select date_bin(make_interval(secs => p_step_s), p.minute, timestamptz 'epoch') as step,
               p.*
          from durable.flow_parts(p_since) p
    ), counts as (
        select p.step, p.queue, sum(p.completed)::bigint as completed,
               sum(p.failed)::bigint as failed, sum(p.dead)::bigint as dead,
               sum(p.cancelled)::bigint as cancelled
          from parts p group by 1, 2
    ), entries as (
        select p.step, p.queue, k.kind, e.key, sum(e.value::bigint) as n
          from parts p
         cross join lateral (values (1, p.failed_classes), (2, p.lag_ms), (3, p.run_ms))
               as k(kind, tally)
         cross join lateral jsonb_each_text(k.tally) as e
         group by 1, 2, 3, 4
    ), tallies as (
        select e.step, e.queue,
               jsonb_object_agg(e.key, e.n) filter (where e.kind = 1) as failed_classes,
               jsonb_object_agg(e.key, e.n) filter (where e.kind = 2) as lag_ms,
               jsonb_object_agg(e.key, e.n) filter (where e.kind = 3) as run_ms
          from entries e group by 1, 2
    )
    select c.step, c.queue, c.completed, c.failed, c.dead, c.cancelled,
           coalesce(t.failed_classes, '{}'), coalesce(t.lag_ms, '{}'), coalesce(t.run_ms, '{}')
      from counts c
      left join tallies t on t.step = c.step and t.queue = c.queue
     order by 1, 2;
end $$;

-- The tasks that ended since p_since, per queue and end state (completed, failed for good,
-- cancelled), from the flow: the cost of the window's minutes, not of its tasks.
create or replace function durable.ended_counts(p_since timestamptz)
returns table (queue text, state text, count bigint)
language sql stable
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
    select x.queue, s.state, s.n
      from (select p.queue, sum(p.completed)::bigint as completed, sum(p.dead)::bigint as dead,
                   sum(p.cancelled)::bigint as cancelled
              from durable.flow_parts(p_since) p
             group by p.queue) x
     cross join lateral (values ('completed', x.completed), ('failed', x.dead),
                                ('cancelled', x.cancelled)) as s(state, n)
     order by 1, 2
$$;
