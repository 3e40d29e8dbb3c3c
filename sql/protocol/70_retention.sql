-- Retention: old finished work goes in bounded batches (each call a short transaction that skips
-- locked rows; the caller loops until a call returns 0). Live work (pending, running, sleeping) is
-- never deleted by age. These are the operator's functions: neither PUBLIC nor durable_worker may
-- call them (90_privileges.sql).

-- Finished tasks of p_states that ended more than p_older_than seconds ago, with their runs,
-- checkpoints, waits, dependency edges, messages, published state and batch memberships: at most
-- p_limit per call. p_task_names: only these
-- task names; p_except_names: not these (the names that have a rule of their own). Runs and
-- checkpoints carry no foreign key to their task, so the same statement deletes them.
create or replace function durable.prune_tasks(p_older_than double precision, p_states text[],
                                               p_limit integer default 1000,
                                               p_task_names text[] default null,
                                               p_except_names text[] default null)
returns integer
language plpgsql as $$
declare
    v_cutoff timestamptz;
    v_count  integer;
begin
    if p_older_than is null or p_older_than < 0 then
        raise exception 'older_than must be a non-negative number of seconds'
            using errcode = 'DU005';
    end if;
    if p_states is null or not p_states <@ array['completed', 'failed', 'cancelled'] then
        raise exception 'only finished states can be pruned: completed, failed, cancelled'
            using errcode = 'DU005';
    end if;
    v_cutoff := durable.now() - make_interval(secs => p_older_than);
    -- the finished tasks not moved to history yet, then those in history (each call takes up to
    -- p_limit of each)
    with doomed as (
        select t.task_id from durable.tasks t
         where t.finished_at is not null and t.finished_at < v_cutoff
           and t.state = any(p_states)
           and (p_task_names is null or t.task_name = any(p_task_names))
           and (p_except_names is null or t.task_name <> all(p_except_names))
         order by t.finished_at
         limit greatest(p_limit, 0)
           for update skip locked
    ), gone as (
        delete from durable.tasks t using doomed where t.task_id = doomed.task_id
        returning t.task_id, t.queue, t.idempotency_key
    ), gone_runs as (
        delete from durable.runs r using gone where r.task_id = gone.task_id
    ), gone_checkpoints as (
        delete from durable.checkpoints k using gone where k.task_id = gone.task_id
    ), gone_keys as (
        delete from durable.task_keys k using gone
         where k.queue = gone.queue and k.idempotency_key = gone.idempotency_key
           and k.task_id = gone.task_id
    ), gone_waits as (
        delete from durable.waits w using gone where w.task_id = gone.task_id
    ), gone_edges as (
        delete from durable.task_dependencies d using gone where d.task_id = gone.task_id
    ), gone_wait_edges as (
        delete from durable.wait_children c using gone where c.task_id = gone.task_id
    ), gone_messages as (
        delete from durable.messages m using gone where m.task_id = gone.task_id
    ), gone_states as (
        delete from durable.states s using gone where s.task_id = gone.task_id
    ), gone_members as (
        delete from durable.batch_members m using gone where m.task_id = gone.task_id
    )
    select count(*) into v_count from gone;
    with doomed as (
        select t.task_id from durable.tasks_history t
         where t.finished_at < v_cutoff
           and t.state = any(p_states)
           and (p_task_names is null or t.task_name = any(p_task_names))
           and (p_except_names is null or t.task_name <> all(p_except_names))
         order by t.finished_at
         limit greatest(p_limit, 0)
           for update skip locked
    ), gone as (
        delete from durable.tasks_history t using doomed where t.task_id = doomed.task_id
        returning t.task_id, t.queue, t.idempotency_key
    ), gone_runs as (
        delete from durable.runs_history r using gone where r.task_id = gone.task_id
    ), gone_checkpoints as (
        delete from durable.checkpoints_history k using gone where k.task_id = gone.task_id
    ), gone_keys as (
        delete from durable.task_keys k using gone
         where k.queue = gone.queue and k.idempotency_key = gone.idempotency_key
           and k.task_id = gone.task_id
    ), gone_waits as (
        delete from durable.waits w using gone where w.task_id = gone.task_id
    ), gone_edges as (
        delete from durable.task_dependencies d using gone where d.task_id = gone.task_id
    ), gone_wait_edges as (
        delete from durable.wait_children c using gone where c.task_id = gone.task_id
    ), gone_messages as (
        delete from durable.messages m using gone where m.task_id = gone.task_id
    ), gone_states as (
        delete from durable.states s using gone where s.task_id = gone.task_id
    ), gone_members as (
        delete from durable.batch_members m using gone where m.task_id = gone.task_id
    )
    select v_count + count(*) into v_count from gone;
    return v_count;
end $$;

-- Events emitted, partition turns served, workers gone and batches finished more than
-- p_older_than seconds ago, at most p_limit rows of each per call; returns how many rows went.
-- (A wait for an event that was pruned waits for the next emit.)
create or replace function durable.prune_bookkeeping(p_older_than double precision,
                                                     p_limit integer default 1000)
returns integer
language plpgsql as $$
declare
    v_cutoff timestamptz;
    v_events integer;
    v_turns  integer;
    v_workers integer;
    v_batches integer;
begin
    if p_older_than is null or p_older_than < 0 then
        raise exception 'older_than must be a non-negative number of seconds'
            using errcode = 'DU005';
    end if;
    v_cutoff := durable.now() - make_interval(secs => p_older_than);
    delete from durable.events e
     where e.name in (select x.name from durable.events x where x.emitted_at < v_cutoff
                       limit greatest(p_limit, 0) for update skip locked);
    get diagnostics v_events = row_count;
    delete from durable.partition_turns p
     where (p.queue, p.partition_key) in (
            select x.queue, x.partition_key from durable.partition_turns x
             where x.served_at < v_cutoff limit greatest(p_limit, 0) for update skip locked);
    get diagnostics v_turns = row_count;
    delete from durable.workers w
     where w.worker_id in (
            select x.worker_id from durable.workers x
             where coalesce(x.stopped_at, x.expires_at) < v_cutoff
               and not exists (select 1 from durable.runs r
                                where r.claimed_by = x.worker_id and r.state = 'running')
             limit greatest(p_limit, 0) for update skip locked);
    get diagnostics v_workers = row_count;
    with gone as (
        delete from durable.batches b
         where b.batch_id in (select x.batch_id from durable.batches x
                               where x.finished_at < v_cutoff
                               limit greatest(p_limit, 0) for update skip locked)
        returning b.batch_id
    ), gone_members as (
        delete from durable.batch_members m using gone where m.batch_id = gone.batch_id
    )
    select count(*) into v_batches from gone;
    return v_events + v_turns + v_workers + v_batches;
end $$;
