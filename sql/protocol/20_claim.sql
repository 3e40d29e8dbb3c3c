-- Claiming: runs handed to workers under a lease, the reaping of lapsed leases, cancellation
-- policies, and the workers' liveness the reaper reads.

-- Claim up to p_qty runs of p_queue for worker p_worker_id, each under a lease of p_claim_timeout
-- seconds. First reaps the queue's lapsed leases and enforces the cancellation policies whose
-- moment passed; last records the starts the worker reports (p_started: runs whose handlers got
-- a slot since its last report; see RESERVED in 00_model.sql). A queue with limits (recorded on
-- it, or on another queue for a task name waiting here), partitioned runs, or task names this
-- worker skips (p_skip_names: names it deferred, unknown to its code) picks its runs through
-- pick_runs(); any other takes its claimable runs in claim order (priority desc, available_at,
-- run_id), skipping those another claim holds. The claimed runs come back in priority order
-- (then run_id): the first p_slots go to the worker's free handler slots and count as started
-- from their claim; the others wait for a slot, reserved until the worker reports their start
-- (RESERVED in 00_model.sql). Without p_slots (a client that runs what it claims at once), every
-- claimed run counts as started. A worker that claimed something is alive: it is registered if
-- unknown, and its liveness lasts at least as long as the lease. random_page_cost = 1.1 lets the
-- planner find the claimed runs and their tasks by key (index probes of a few rows priced as
-- what they cost on a cached or solid-state database) instead of scanning a small table.
-- Each claimed run records p_code_version, the code version of the worker that runs it.
create or replace function durable.claim(p_queue text, p_worker_id text,
                                         p_claim_timeout double precision, p_qty integer default 1,
                                         p_code_version text default null,
                                         p_started uuid[] default null,
                                         p_skip_names text[] default null,
                                         p_slots integer default null)
returns table (run_id uuid, task_id uuid, task_name text, params jsonb, headers jsonb,
               attempt integer, max_attempts integer, timeout_s double precision,
               heartbeat_timeout_s double precision, lease_expires_at timestamptz,
               has_checkpoints boolean)
language plpgsql
security definer set search_path = pg_catalog, pg_temp set random_page_cost = 1.1 as $$
#variable_conflict use_column
declare
    v_now    timestamptz := durable.now();
    v_lease  timestamptz;
    v_picked uuid[];
    v_limited boolean;
    v_claimed boolean;
begin
    perform durable.check_queue(p_queue);
    if p_claim_timeout is null or p_claim_timeout <= 0 then
        raise exception 'claim_timeout must be positive' using errcode = 'DU005';
    end if;
    if p_worker_id is null or length(p_worker_id) = 0 then
        raise exception 'worker_id must not be empty' using errcode = 'DU005';
    end if;
    if length(p_code_version) > 255 then
        raise exception 'code version must be at most 255 characters' using errcode = 'DU005';
    end if;
    v_lease := v_now + make_interval(secs => p_claim_timeout);
    perform durable.reap_runs(p_queue, v_now);
    perform durable.enforce_cancellations(v_now);
    -- a paused queue hands out nothing (its lapsed leases are reaped all the same)
    if exists (select 1 from durable.paused_queues q where q.queue = p_queue) then
        if cardinality(p_started) > 0 then
            perform durable.record_starts(p_worker_id, p_started);
        end if;
        return;
    end if;
    if cardinality(p_skip_names) > 0
       or exists (select 1 from durable.limits l
                   where l.queue = p_queue
                      or exists (select 1 from durable.runs r
                                  where r.queue = p_queue and r.task_name = l.task_name
                                    and r.state in ('pending', 'sleeping')))
       or exists (select 1 from durable.runs r
                   where r.queue = p_queue and r.state in ('pending', 'sleeping')
                     and r.partition_key is not null) then
        v_picked := durable.pick_runs(p_queue, p_qty, v_now, coalesce(p_skip_names, '{}'));
        return query
        with ranked as (
            select r.run_id, row_number() over (order by r.priority desc, r.run_id) as n
              from durable.runs r where r.run_id = any(v_picked)
        ), claimed as (
            update durable.runs r
               set state = 'running', claimed_by = p_worker_id, started_at = v_now,
                   lease_s = p_claim_timeout, lease_expires_at = v_lease,
                   code_version = p_code_version, reserved = coalesce(ranked.n > p_slots, false)
              from ranked where r.run_id = ranked.run_id
            returning r.run_id, r.task_id, r.attempt, r.priority
        )
        select c.run_id, t.task_id, t.task_name, t.params, t.headers, c.attempt, t.max_attempts,
               t.timeout_s, t.heartbeat_timeout_s, v_lease,
               exists (select 1 from durable.checkpoints k where k.task_id = t.task_id)
          from claimed c join durable.tasks t on t.task_id = c.task_id
         order by c.priority desc, c.run_id;
    else
        -- (a run of a limited name spawned since the check above waits for the next claim)
        v_limited := exists (select 1 from durable.limits);
        return query
        with picked as (
            select r.run_id, r.priority from durable.runs r
             where r.queue = p_queue and r.state in ('pending', 'sleeping')
               and r.available_at <= v_now
               and (not v_limited
                    or not exists (select 1 from durable.limits l
                                    where l.task_name = r.task_name))
             order by r.priority desc, r.available_at, r.run_id
             limit greatest(p_qty, 0)
             for update skip locked
        ), ranked as (
            select p.run_id, row_number() over (order by p.priority desc, p.run_id) as n
              from picked p
        ), claimed as (
            update durable.runs r
               set state = 'running', claimed_by = p_worker_id, started_at = v_now,
                   lease_s = p_claim_timeout, lease_expires_at = v_lease,
                   code_version = p_code_version, reserved = coalesce(ranked.n > p_slots, false)
              from ranked where r.run_id = ranked.run_id
            returning r.run_id, r.task_id, r.attempt, r.priority
        )
        select c.run_id, t.task_id, t.task_name, t.params, t.headers, c.attempt, t.max_attempts,
               t.timeout_s, t.heartbeat_timeout_s, v_lease,
               exists (select 1 from durable.checkpoints k where k.task_id = t.task_id)
          from claimed c join durable.tasks t on t.task_id = c.task_id
         order by c.priority desc, c.run_id;
    end if;
    v_claimed := found;
    -- the starts last, then the worker's row: the order of extend_claims(), which locks the
    -- same runs (in run_id order) before the same row
    if cardinality(p_started) > 0 then
        perform durable.record_starts(p_worker_id, p_started);
    end if;
    if v_claimed then
        insert into durable.workers as w (worker_id, started_at, last_seen_at, expires_at)
        values (p_worker_id, v_now, v_now, v_lease)
        on conflict (worker_id) do update
            set last_seen_at = v_now, expires_at = greatest(w.expires_at, v_lease),
                stopped_at = null;
    end if;
end $$;

-- The runs of worker p_worker_id whose handlers started: no longer reserved (see RESERVED in
-- 00_model.sql). Locks them in run_id order, as every batched write of a worker does. Each run
-- is found by its key alone, one probe per reported run, and tested once locked: any test of
-- its state in that lookup would let the planner pick runs_running_group instead (under
-- statistics taken while the runs were pending, which count no running run, a scan of all of
-- it looks cheaper; it holds an entry for every run claimed since the last vacuum). In
-- PL/pgSQL, the statement's plan is kept for the session (an SQL function plans each call).
create or replace function durable.record_starts(p_worker_id text, p_run_ids uuid[])
returns void
language plpgsql as $$
begin
    update durable.runs r set reserved = false
      from (select s.run_id, s.reserved, s.state, s.claimed_by
              from (select distinct u.id from unnest(p_run_ids) as u(id) order by u.id) u
             cross join lateral (
                  -- limit 1 (a key finds one run) keeps the tests below out of this lookup
                  select s.run_id, s.reserved, s.state, s.claimed_by from durable.runs s
                   where s.run_id = u.id
                   limit 1
                     for update) s) started
     where r.run_id = started.run_id and started.reserved and started.state = 'running'
       and started.claimed_by = p_worker_id;
end $$;

-- Runs for a claim on a queue with limits, partitions or skipped task names, at most each task
-- name's free capacity and each concurrency key's. A task name's limits hold on every queue: its
-- max_running and key_limit (the least recorded on any queue) count its running runs wherever
-- they run, and claims on every queue serialize on its limit rows (locked in one order), so
-- that two claims never both take the last free slot. Its rate limit counts the starts on this
-- queue. A partitioned queue picks round-robin across partitions (the unpartitioned runs count
-- as one more partition); any other visits each (task name, concurrency key) group with
-- claimable runs once, by index, and reads the head of the groups that may start only: a
-- capped or skipped group costs one index probe, however many runs it holds.
create or replace function durable.pick_runs(p_queue text, p_qty integer, p_now timestamptz,
                                             p_skip text[])
returns uuid[]
language plpgsql as $$
declare
    v_limit   record;
    v_rate    record;
    v_names   text[] := '{}';
    v_caps    integer[] := '{}';
    v_knames  text[] := '{}';
    v_klimits integer[] := '{}';
    v_blocked text[] := coalesce(p_skip, '{}');
    v_cap     integer;
    v_parts   text[];
    v_window  integer := greatest(p_qty, 0) * 4 + 16;
    v_per     integer;
    v_cands   uuid[];
    v_locked  uuid[];
    v_picked  uuid[];
begin
    perform 1 from durable.limits l
     where l.queue = p_queue
        or exists (select 1 from durable.runs r
                    where r.queue = p_queue and r.task_name = l.task_name
                      and r.state in ('pending', 'sleeping'))
     order by l.task_name, l.queue
       for update;
    for v_limit in
        select l.task_name, min(l.max_running) as max_running, min(l.key_limit) as key_limit
          from durable.limits l
         where l.queue = p_queue
            or exists (select 1 from durable.runs r
                        where r.queue = p_queue and r.task_name = l.task_name
                          and r.state in ('pending', 'sleeping'))
         group by l.task_name
         order by l.task_name
    loop
        v_cap := p_qty;
        if v_limit.max_running is not null then
            v_cap := least(v_cap, v_limit.max_running - (
                select count(*) from durable.runs r
                 where r.task_name = v_limit.task_name and r.state = 'running')::integer);
        end if;
        select * into v_rate from durable.limits l
         where l.queue = p_queue and l.task_name = v_limit.task_name
           and l.rate_allowed is not null;
        if found then
            v_cap := least(v_cap, v_rate.rate_allowed - (
                select count(*) from unnest(v_rate.recent_starts) as s(at)
                 where s.at > p_now - make_interval(secs => v_rate.rate_period_s))::integer);
        end if;
        v_cap := greatest(v_cap, 0);
        v_names := v_names || v_limit.task_name;
        v_caps := v_caps || v_cap;
        if v_cap = 0 then
            v_blocked := v_blocked || v_limit.task_name;
        end if;
        if v_limit.key_limit is not null then
            v_knames := v_knames || v_limit.task_name;
            v_klimits := v_klimits || v_limit.key_limit;
        end if;
    end loop;

    -- the partitions with waiting runs (a loose index scan: one probe per partition)
    with recursive parts(pk) as (
        (select r.partition_key from durable.runs r
          where r.queue = p_queue and r.state in ('pending', 'sleeping')
            and r.partition_key is not null
          order by r.partition_key limit 1)
        union all
        select (select r.partition_key from durable.runs r
                 where r.queue = p_queue and r.state in ('pending', 'sleeping')
                   and r.partition_key > parts.pk
                 order by r.partition_key limit 1)
          from parts where parts.pk is not null
    )
    select array_agg(pk) into v_parts from parts where pk is not null;

    if v_parts is null then
        -- the (task name, key) groups with waiting runs (a loose index scan: one probe per
        -- group), and the head of each group that may start, up to its free capacity
        with recursive groups(name, k) as (
            (select r.task_name, coalesce(r.concurrency_key, '') from durable.runs r
              where r.queue = p_queue and r.state in ('pending', 'sleeping')
              order by r.task_name, coalesce(r.concurrency_key, '') limit 1)
            union all
            select n.task_name, n.k
              from groups g
             cross join lateral (
                  select r.task_name, coalesce(r.concurrency_key, '') as k from durable.runs r
                   where r.queue = p_queue and r.state in ('pending', 'sleeping')
                     and (r.task_name, coalesce(r.concurrency_key, '')) > (g.name, g.k)
                   order by r.task_name, coalesce(r.concurrency_key, '') limit 1) n
        ), free_groups as (
            select g.name, g.k,
                   least(v_window,
                         coalesce(v_caps[array_position(v_names, g.name)], v_window),
                         coalesce(v_klimits[array_position(v_knames, g.name)] - (
                             select count(*) from durable.runs r
                              where r.task_name = g.name and r.state = 'running'
                                and coalesce(r.concurrency_key, '') = g.k)::integer,
                                  v_window)) as room
              from groups g
             where g.name <> all(v_blocked)
        )
        select array_agg(c.run_id order by c.priority desc, c.available_at, c.run_id)
          into v_cands
          from (select h.run_id, h.priority, h.available_at
                  from free_groups o
                 cross join lateral (
                      select r.run_id, r.priority, r.available_at from durable.runs r
                       where r.queue = p_queue and r.state in ('pending', 'sleeping')
                         and r.task_name = o.name and coalesce(r.concurrency_key, '') = o.k
                         and r.available_at <= p_now
                       order by r.priority desc, r.available_at, r.run_id
                       limit greatest(o.room, 0)) h
                 order by h.priority desc, h.available_at, h.run_id
                 limit v_window) c;
    else
        v_per := greatest(2, ceil(v_window::numeric
                                  / (coalesce(cardinality(v_parts), 0) + 1))::integer);
        with cands as (
            select c.run_id, c.partition_key, c.rank, c.priority, c.available_at
              from unnest(coalesce(v_parts, '{}')) as p(pk)
             cross join lateral (
                  select r.run_id, r.partition_key, r.priority, r.available_at,
                         row_number() over (order by r.priority desc, r.available_at, r.run_id)
                             as rank
                    from durable.runs r
                   where r.queue = p_queue and r.state in ('pending', 'sleeping')
                     and r.partition_key = p.pk and r.available_at <= p_now
                     and r.task_name <> all(v_blocked)
                   order by r.priority desc, r.available_at, r.run_id
                   limit v_per) c
            union all
            select u.run_id, '',
                   row_number() over (order by u.priority desc, u.available_at, u.run_id),
                   u.priority, u.available_at
              from (select r.run_id, r.priority, r.available_at from durable.runs r
                     where r.queue = p_queue and r.state in ('pending', 'sleeping')
                       and r.partition_key is null and r.available_at <= p_now
                       and r.task_name <> all(v_blocked)
                     order by r.priority desc, r.available_at, r.run_id
                     limit v_per) u
        )
        -- round-robin: every partition's first run, then every partition's second, ...; within
        -- a round, the partition served longest ago first
        select array_agg(c.run_id order by c.ord)
          into v_cands
          from (select cands.run_id,
                       row_number() over (order by cands.rank, t.served_at nulls first,
                                                   cands.priority desc, cands.available_at,
                                                   cands.run_id) as ord
                  from cands
                  left join durable.partition_turns t
                         on t.queue = p_queue and t.partition_key = cands.partition_key
                 order by ord
                 limit v_window) c;
    end if;

    select array_agg(x.id order by x.ord) into v_locked
      from (select u.id, u.ord from unnest(coalesce(v_cands, '{}')) with ordinality as u(id, ord)
              join durable.runs r on r.run_id = u.id
             where r.state in ('pending', 'sleeping') and r.available_at <= p_now
               for update of r skip locked) x;

    -- each task name's free capacity, and each concurrency key's (of a name with a key_limit)
    select array_agg(y.id order by y.ord) into v_picked
      from (select z.id, z.ord from (
                select x.id, x.ord, r.task_name, coalesce(r.concurrency_key, '') as k,
                       row_number() over (partition by r.task_name order by x.ord) as n,
                       row_number() over (partition by r.task_name,
                                                       coalesce(r.concurrency_key, '')
                                          order by x.ord) as kn
                  from unnest(coalesce(v_locked, '{}')) with ordinality as x(id, ord)
                  join durable.runs r on r.run_id = x.id) z
             where coalesce(z.n <= v_caps[array_position(v_names, z.task_name)],
                            -- a limited name whose limits were not read here (its first run
                            -- in this queue came after they were locked) waits for the next
                            -- claim
                            not exists (select 1 from durable.limits l
                                         where l.task_name = z.task_name))
               and (array_position(v_knames, z.task_name) is null
                    or z.kn <= v_klimits[array_position(v_knames, z.task_name)] - (
                           select count(*) from durable.runs r
                            where r.task_name = z.task_name and r.state = 'running'
                              and coalesce(r.concurrency_key, '') = z.k))
             order by z.ord
             limit greatest(p_qty, 0)) y;

    if cardinality(v_parts) > 0 then
        insert into durable.partition_turns as t (queue, partition_key, served_at)
        select p_queue, coalesce(r.partition_key, ''), p_now
          from durable.runs r where r.run_id = any(coalesce(v_picked, '{}'))
         group by 2 order by 2
        on conflict (queue, partition_key) do update set served_at = excluded.served_at;
    end if;

    -- the starts count against the rate limits
    update durable.limits l
       set recent_starts = array(select s.at from unnest(l.recent_starts) as s(at)
                                  where s.at > p_now - make_interval(secs => l.rate_period_s))
                           || array_fill(p_now, array[c.n])
      from (select r.task_name, count(*)::integer as n
              from unnest(coalesce(v_picked, '{}')) as p(id)
              join durable.runs r on r.run_id = p.id
             group by r.task_name) c
     where l.queue = p_queue and l.task_name = c.task_name and l.rate_allowed is not null;
    return coalesce(v_picked, '{}');
end $$;

-- Reap the runs of p_queue whose lease lapsed, at most 100 per call (the oldest lapsed leases
-- first): 'crash' when their worker is gone (its liveness lapsed, or it stopped, or it is
-- unknown), 'heartbeat_timeout' when it was seen alive after the lease lapsed; a run whose
-- reason is not known yet waits. A reserved run
-- goes back to pending without spending an attempt (RESERVED in 00_model.sql); any other reaped
-- run fails like any other: its task retries, or ends (and its on_discard hook is recorded).
create or replace function durable.reap_runs(p_queue text, p_now timestamptz) returns integer
language plpgsql as $$
declare
    v_cand   record;
    v_run    durable.runs;
    v_reason text;
    v_error  jsonb;
    v_count  integer := 0;
begin
    for v_cand in
        select r.run_id, r.task_id, r.claimed_by, r.lease_expires_at,
               case when w.worker_id is null or w.stopped_at is not null or w.expires_at <= p_now
                        then 'crash'
                    when w.last_seen_at > r.lease_expires_at then 'heartbeat_timeout'
               end as reason
          from durable.runs r
          left join durable.workers w on w.worker_id = r.claimed_by
         where r.queue = p_queue and r.state = 'running' and r.lease_expires_at <= p_now
           -- only runs whose reason is known, so that waiting runs never fill the limit
           and (w.worker_id is null or w.stopped_at is not null or w.expires_at <= p_now
                or w.last_seen_at > r.lease_expires_at)
         -- the oldest lapsed leases first: in the order of runs_lease, which the planner then
         -- always picks (without it, stale statistics that count no running runs price a scan
         -- of runs_running_group the same, and every claim read all the running runs)
         order by r.lease_expires_at
         limit 100
    loop
        continue when v_cand.reason is null;
        perform 1 from durable.tasks t where t.task_id = v_cand.task_id
            for no key update skip locked;
        continue when not found;
        select * into v_run from durable.runs r where r.run_id = v_cand.run_id for update;
        continue when v_run.state <> 'running' or v_run.lease_expires_at > p_now;
        v_reason := v_cand.reason;
        v_error := jsonb_build_object(
            'type', case when v_reason = 'crash' then 'WorkerCrashed' else 'HeartbeatTimeout' end,
            'message', format('lease expired at %s; worker %s %s', v_run.lease_expires_at,
                              v_run.claimed_by,
                              case when v_reason = 'crash' then 'is gone'
                                   else 'is alive but stopped renewing the lease' end));
        if v_run.reserved and durable.reserved_reaps_free(v_run) then
            -- its handler never started, as far as anyone knows: no attempt is spent
            update durable.runs
               set state = 'released', failure_reason = v_reason, finished_at = p_now,
                   error = v_error || jsonb_build_object('reserved', true)
             where run_id = v_run.run_id;
            perform durable.insert_run(t, v_run.attempt, 'pending', p_now, p_now)
               from durable.tasks t where t.task_id = v_run.task_id;
        else
            perform durable.fail_locked_run(v_run, v_reason, v_error, null, p_now);
        end if;
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

-- Whether the reap of reserved run p_run may hand its task back without spending an attempt:
-- fewer than 3 reserved runs of its task were reaped before (see RESERVED in 00_model.sql).
create or replace function durable.reserved_reaps_free(p_run durable.runs) returns boolean
language sql stable as $$
    select count(*) < 3 from durable.runs r
     where r.task_id = p_run.task_id and r.reserved and r.state = 'released'
       and r.failure_reason is not null
$$;

-- Cancel the tasks whose cancellation policy says so; re-arm cancel_at of the others. At most
-- 100 tasks per call, skipping those locked. Run by every claim and every worker heartbeat, so a
-- running task past its max_duration is cancelled even when nobody claims.
create or replace function durable.enforce_cancellations(p_now timestamptz) returns integer
language plpgsql as $$
declare
    v_task      durable.tasks;
    v_max_delay double precision;
    v_max_dur   double precision;
    v_first     timestamptz;
    v_count     integer := 0;
begin
    for v_task in
        select * from durable.tasks t
         where t.cancel_at <= p_now and t.state = 'pending'
         order by t.cancel_at
         limit 100
           for no key update skip locked
    loop
        v_max_delay := (v_task.cancellation->>'max_delay')::double precision;
        v_max_dur := (v_task.cancellation->>'max_duration')::double precision;
        select min(r.started_at) into v_first from durable.runs r
         where r.task_id = v_task.task_id and r.started_at is not null;
        if v_first is null and v_max_delay is not null
           and p_now >= coalesce(v_task.scheduled_at, v_task.created_at)
                        + make_interval(secs => v_max_delay) then
            perform durable.cancel_locked_task(
                v_task,
                jsonb_build_object('type', 'CancellationPolicy',
                                   'message',
                                   format('not started within max_delay %ss', v_max_delay)),
                p_now);
            v_count := v_count + 1;
        elsif v_first is not null and v_max_dur is not null
              and p_now >= v_first + make_interval(secs => v_max_dur) then
            perform durable.cancel_locked_task(
                v_task,
                jsonb_build_object('type', 'CancellationPolicy',
                                   'message',
                                   format('ran longer than max_duration %ss', v_max_dur)),
                p_now);
            v_count := v_count + 1;
        else
            -- not yet: the next moment a policy could apply (least() skips nulls)
            update durable.tasks t
               set cancel_at = case
                       when v_first is not null then v_first + make_interval(secs => v_max_dur)
                       else least(coalesce(t.scheduled_at, t.created_at)
                                      + make_interval(secs => v_max_delay),
                                  p_now + make_interval(secs => v_max_dur))
                   end
             where t.task_id = v_task.task_id;
        end if;
    end loop;
    return v_count;
end $$;

-- ---------------------------------------------------------------------------------------------
-- the workers' liveness

-- A worker starting (or starting again under the same id) with p_concurrency slots: alive for
-- p_ttl seconds.
create or replace function durable.register_worker(p_worker_id text, p_host text, p_pid integer,
                                                   p_queues text[], p_ttl double precision,
                                                   p_concurrency integer default null)
returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
begin
    insert into durable.workers as w (worker_id, host, pid, queues, started_at, last_seen_at,
                                      expires_at, concurrency, busy, claimed_ahead, stats_at)
    values (p_worker_id, p_host, p_pid, coalesce(p_queues, '{}'), v_now, v_now,
            v_now + make_interval(secs => p_ttl), p_concurrency, 0, 0, v_now)
    on conflict (worker_id) do update
        set host = excluded.host, pid = excluded.pid, queues = excluded.queues,
            last_seen_at = v_now, expires_at = excluded.expires_at, stopped_at = null,
            concurrency = excluded.concurrency, busy = 0,
            claimed_ahead = 0, stats_at = v_now;
end $$;

-- A worker alive for p_ttl more seconds; false when it is unknown or stopped.
create or replace function durable.worker_heartbeat(p_worker_id text, p_ttl double precision)
returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
begin
    update durable.workers
       set last_seen_at = v_now, expires_at = v_now + make_interval(secs => p_ttl)
     where worker_id = p_worker_id and stopped_at is null;
    return found;
end $$;

-- A worker saying goodbye: the runs it still holds are reaped as 'crash' once their lease lapses.
create or replace function durable.stop_worker(p_worker_id text) returns void
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now timestamptz := durable.now();
begin
    update durable.workers set stopped_at = v_now, expires_at = v_now, last_seen_at = v_now
     where worker_id = p_worker_id;
end $$;
