-- Retention: old finished work goes in bounded batches (each call a short transaction that skips
-- locked rows; the caller loops until a call returns 0). Live work (pending, running, sleeping) is
-- never deleted by age. These are the operator's functions: neither PUBLIC nor durable_worker may
-- call them (90_privileges.sql).

-- Finished tasks of p_states that ended more than p_older_than seconds ago, with their runs and
-- checkpoints and what they leave outside the task tables (durable.forget_task_ids): at most
-- p_limit per call from the hot tables and as many from history. p_task_names: only these task
-- names; p_except_names: not these (the names that have a rule of their own).
--
-- One statement of static SQL for both places, the same steps side by side: pick, delete the
-- task rows, then their runs and checkpoints (which carry no foreign key to their task). Not a
-- loop of execute format() over the two sets of tables: a dynamic statement is planned at every
-- call, and planning the pick over every day partition of history cost more than the pick (an
-- empty call with 300 partitions: 55 ms against 5 ms for this statement's cached plan).
create or replace function durable.prune_tasks(p_older_than double precision, p_states text[],
                                               p_limit integer default 1000,
                                               p_task_names text[] default null,
                                               p_except_names text[] default null)
returns integer
language plpgsql as $$
declare
    v_cutoff timestamptz;
    v_ids    uuid[];
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
    with hot as (
        select t.task_id from durable.tasks t
         where t.finished_at is not null and t.finished_at < v_cutoff
           and t.state = any(p_states)
           and (p_task_names is null or t.task_name = any(p_task_names))
           and (p_except_names is null or t.task_name <> all(p_except_names))
         order by t.finished_at
         limit greatest(p_limit, 0)
           for update skip locked
    ), cold as (
        select t.task_id from durable.tasks_history t
         where t.finished_at < v_cutoff
           and t.state = any(p_states)
           and (p_task_names is null or t.task_name = any(p_task_names))
           and (p_except_names is null or t.task_name <> all(p_except_names))
         order by t.finished_at
         limit greatest(p_limit, 0)
           for update skip locked
    ), gone_hot as (
        delete from durable.tasks t using hot where t.task_id = hot.task_id
        returning t.task_id
    ), gone_cold as (
        delete from durable.tasks_history t using cold where t.task_id = cold.task_id
        returning t.task_id
    ), gone_hot_runs as (
        delete from durable.runs r using gone_hot g where r.task_id = g.task_id
    ), gone_cold_runs as (
        delete from durable.runs_history r using gone_cold g where r.task_id = g.task_id
    ), gone_hot_checkpoints as (
        delete from durable.checkpoints k using gone_hot g where k.task_id = g.task_id
    ), gone_cold_checkpoints as (
        delete from durable.checkpoints_history k using gone_cold g where k.task_id = g.task_id
    )
    select array_agg(g.task_id) into v_ids
      from (select task_id from gone_hot union all select task_id from gone_cold) g;
    perform durable.forget_task_ids(v_ids);
    return coalesce(cardinality(v_ids), 0);
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
