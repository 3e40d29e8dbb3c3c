-- Hot and cold: live work in tasks, runs and checkpoints; finished tasks, with their runs and
-- checkpoints, in tasks_history, runs_history and checkpoints_history (partitioned by day of
-- task id: sql/schema/0023_history.sql). The rules, each in one place:
--
-- * THE MOVE (move_to_history): a task that ended (state <> 'pending', no live run) moves with
--   its runs and checkpoints in one statement: deleted from the hot tables and inserted into
--   history, atomically. The workers' maintenance calls it in batches, lazily: the statements
--   that end a task do not pay for it. Waits, messages, states, dependency edges and batch
--   memberships stay where they are (they are keyed by task id).
-- * READS over both go through the views all_tasks, all_runs and all_checkpoints, in ONE
--   statement: in READ COMMITTED each statement has its own snapshot, and a move commits its
--   delete and insert at once, so one statement sees a task in exactly one place.
-- * WRITES to finished work (retry, replay, discard, reviving dependents) lock the task with
--   durable.lock_task, which moves it back first (reopen_task) when it is in history, so the
--   code that changes it works on the hot tables only. A writer whose lock on a hot row waited
--   for the mover finds no row once the move commits: lock_task then looks in history again.
-- * Locks on a set of tasks that may have ended (dependencies, awaited children, batch members)
--   are taken in both places (share_tasks): a share lock in history keeps a task from moving
--   back meanwhile, one in the hot table keeps the mover from taking it.
-- * Idempotency keys live in task_keys (queue, key -> task), which spans both; retention
--   deletes a task's key with it.

create or replace view durable.all_tasks as
    select * from durable.tasks
    union all
    select * from durable.tasks_history;

create or replace view durable.all_runs as
    select * from durable.runs
    union all
    select * from durable.runs_history;

create or replace view durable.all_checkpoints as
    select * from durable.checkpoints
    union all
    select * from durable.checkpoints_history;

-- A task's state as a caller sees it, from its stored state and id: its live run's state while
-- it is live (durable.live_state, for a row of either table).
create or replace function durable.state_of(p_state text, p_task_id uuid) returns text
language sql stable as $$
    select case when p_state = 'pending'
                then coalesce((select r.state from durable.runs r
                                where r.task_id = p_task_id
                                  and r.state in ('pending', 'running', 'sleeping')), 'pending')
                else p_state end
$$;

-- Move up to p_limit tasks that ended more than p_min_age seconds ago (and their runs and
-- checkpoints) from the hot tables to history; returns how many moved. A task locked by a writer
-- is skipped (the next call takes it), so callers never wait on each other.
create or replace function durable.move_to_history(p_limit integer default 5000,
                                                   p_min_age double precision default 0)
returns integer
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_before timestamptz := durable.now() - make_interval(secs => greatest(p_min_age, 0));
    v_ids    uuid[];
    v_count  integer;
begin
    -- The tasks to move, locked, as an array: every statement below reads one table by it, so
    -- no plan can join them. A join's plan is only as good as the statistics, and those of a
    -- hot table say "empty" after a vacuum that found it empty and left its pages (reltuples
    -- 0, relpages > 0: the planner counts every row of them as 1) until the next analyze; a
    -- join planned then walked a whole index per task: 1 s to move 500 of 5,000 finished tasks
    -- (tests/integration/test_history.py), minutes for 50,000 of 250,000.
    select array_agg(t.task_id) into v_ids from (
        select t.task_id from durable.tasks t
         where t.finished_at <= v_before and t.state <> 'pending'
         limit greatest(p_limit, 0)
           for update skip locked
    ) t;
    if v_ids is null then
        return 0;
    end if;
    -- No check for a live run: a task ends in the statement that ends its run (complete, fail,
    -- reap, cancel), so an ended task has none. The check this replaced was itself a trap: its
    -- generic plan scanned runs_live_state (state, task_id) by "task_id = any(array)", one walk
    -- of the whole index per id on PostgreSQL 15 (a 50,000-task move ran for minutes).
    with gone as (
        delete from durable.tasks t where t.task_id = any(v_ids) returning t.*
    ), kept as (
        insert into durable.tasks_history select * from gone
    ), gone_runs as (
        delete from durable.runs r where r.task_id = any(v_ids) returning r.*
    ), kept_runs as (
        insert into durable.runs_history select * from gone_runs
    ), gone_checkpoints as (
        delete from durable.checkpoints k where k.task_id = any(v_ids) returning k.*
    ), kept_checkpoints as (
        insert into durable.checkpoints_history select * from gone_checkpoints
    )
    select count(*) into v_count from gone;
    return v_count;
end $$;

-- Analyze the hot tasks and runs when they hold far more rows than their statistics say; true
-- when it did. A vacuum that finds a hot table empty records 0 rows and, keeping its pages
-- (truncate false), leaves the planner counting every row there as 1 until the next analyze:
-- after a quiet spell a burst of work is then claimed by plans made for an empty table (a claim
-- of 50 from 20,000 pending: 216 ms, 4 ms once analyzed). Autovacuum analyzes only when it
-- runs, and this machine's server runs without it; the workers call this every round of their
-- history upkeep (one catalog read when the statistics hold). As the tables' owner, so a
-- durable_worker role can too.
create or replace function durable.refresh_hot_stats() returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
begin
    if not exists (
        select 1 from pg_stat_user_tables s join pg_class c on c.oid = s.relid
         where s.relid in ('durable.tasks'::regclass, 'durable.runs'::regclass)
           and s.n_live_tup > 2 * greatest(c.reltuples, 0) + 1000
    ) then
        return false;
    end if;
    analyze (skip_locked) durable.tasks, durable.runs;
    return true;
end $$;

-- Move task p_task_id back from history to the hot tables (its runs and checkpoints with it),
-- so that a write to finished work runs on the hot tables; false when it is not in history.
-- Internal: callers lock the task right after (durable.lock_task).
create or replace function durable.reopen_task(p_task_id uuid) returns boolean
language plpgsql as $$
declare
    v_count integer;
begin
    with gone as (
        delete from durable.tasks_history t where t.task_id = p_task_id returning t.*
    ), back as (
        insert into durable.tasks select * from gone
    ), gone_runs as (
        delete from durable.runs_history r where r.task_id = p_task_id returning r.*
    ), back_runs as (
        insert into durable.runs select * from gone_runs
    ), gone_checkpoints as (
        delete from durable.checkpoints_history k where k.task_id = p_task_id returning k.*
    ), back_checkpoints as (
        insert into durable.checkpoints select * from gone_checkpoints
    )
    select count(*) into v_count from gone;
    return v_count > 0;
end $$;

-- Share-lock tasks p_task_ids wherever they are (hot rows: the mover skips them; history rows:
-- none moves back), in task_id order; returns one of them that exists in neither (null: all
-- exist).
create or replace function durable.share_tasks(p_task_ids uuid[]) returns uuid
language plpgsql as $$
declare
    v_missing uuid;
begin
    perform 1 from durable.tasks t where t.task_id = any(p_task_ids) order by t.task_id
        for share;
    perform 1 from durable.tasks_history t where t.task_id = any(p_task_ids) order by t.task_id
        for share;
    select c.id into v_missing from unnest(p_task_ids) as c(id)
     where not exists (select 1 from durable.all_tasks t where t.task_id = c.id) limit 1;
    return v_missing;
end $$;

-- The day of a UUIDv7 (its millisecond prefix), in UTC.
create or replace function durable.uuidv7_day(p_id uuid) returns date
language sql immutable as $$
    select (to_timestamp(('x' || substr(replace(p_id::text, '-', ''), 1, 12))::bit(48)::bigint
                         / 1000.0) at time zone 'UTC')::date
$$;

-- Create the history partitions (one per UTC day of task id, for the three tables) of today and
-- the next p_days_ahead days, and of each earlier day that has finished tasks waiting in the hot
-- tables (a database upgraded with its history); returns how many days were added. A day whose
-- ids the DEFAULT partition holds already gets no partition (its rows stay in DEFAULT).
create or replace function durable.ensure_history_partitions(p_days_ahead integer default 3)
returns integer
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_today date := (durable.now() at time zone 'UTC')::date;
    v_midnight timestamptz := (v_today::timestamp) at time zone 'UTC';
    v_days  date[];
    v_day   date;
    v_next  uuid;
    v_lo    uuid;
    v_hi    uuid;
    v_table text;
    v_count integer := 0;
begin
    perform pg_advisory_xact_lock(hashtextextended('durable.history_partitions', 0));
    v_days := array(select v_today + i from generate_series(0, greatest(p_days_ahead, 0)) i);
    -- the earlier days of the finished tasks still hot, one index probe per day
    select t.task_id into v_next from durable.tasks t
     where t.state <> 'pending' and t.task_id < durable.uuidv7_floor(v_midnight)
     order by t.task_id limit 1;
    while v_next is not null loop
        v_day := durable.uuidv7_day(v_next);
        v_days := v_days || v_day;
        v_next := null;
        select t.task_id into v_next from durable.tasks t
         where t.state <> 'pending'
           and t.task_id >= durable.uuidv7_floor(((v_day + 1)::timestamp) at time zone 'UTC')
           and t.task_id < durable.uuidv7_floor(v_midnight)
         order by t.task_id limit 1;
    end loop;
    foreach v_day in array v_days loop
        continue when pg_catalog.to_regclass(
            format('durable.tasks_history_%s', to_char(v_day, 'YYYYMMDD'))) is not null;
        v_lo := durable.uuidv7_floor((v_day::timestamp) at time zone 'UTC');
        v_hi := durable.uuidv7_floor(((v_day + 1)::timestamp) at time zone 'UTC');
        continue when exists (select 1 from durable.tasks_history_default t
                               where t.task_id >= v_lo and t.task_id < v_hi)
                   or exists (select 1 from durable.runs_history_default r
                               where r.task_id >= v_lo and r.task_id < v_hi)
                   or exists (select 1 from durable.checkpoints_history_default k
                               where k.task_id >= v_lo and k.task_id < v_hi);
        foreach v_table in array array['tasks', 'runs', 'checkpoints'] loop
            execute format('create table durable.%I partition of durable.%I '
                           'for values from (%L) to (%L)',
                           v_table || '_history_' || to_char(v_day, 'YYYYMMDD'),
                           v_table || '_history', v_lo, v_hi);
        end loop;
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

-- Retention by partition: drop the day partitions of history (the three tables) whose every
-- task ended more than p_older_than seconds ago and whose day is over, with what else is kept of
-- their tasks (idempotency keys, waits, dependency edges, messages, published state, batch
-- memberships). The caller passes an age past which every finished task is to go, whatever its
-- name and state (durable/runtime/retention.py). Returns how many days went.
create or replace function durable.drop_history_partitions(p_older_than double precision)
returns integer
language plpgsql as $$
declare
    v_cutoff timestamptz;
    v_part   record;
    v_last   timestamptz;
    v_live   boolean;
    v_count  integer := 0;
begin
    if p_older_than is null or p_older_than < 0 then
        raise exception 'older_than must be a non-negative number of seconds'
            using errcode = 'DU005';
    end if;
    v_cutoff := durable.now() - make_interval(secs => p_older_than);
    for v_part in
        select c.relname, to_date(right(c.relname, 8), 'YYYYMMDD') as day
          from pg_catalog.pg_inherits i
          join pg_catalog.pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'durable.tasks_history'::regclass
           and c.relname ~ '^tasks_history_[0-9]{8}$'
         order by c.relname
    loop
        exit when ((v_part.day + 1)::timestamp at time zone 'UTC') > v_cutoff;
        execute format('select max(t.finished_at) from durable.%I t', v_part.relname)
           into v_last;
        continue when v_last >= v_cutoff;
        -- a task of that day still live would move into the partition later: keep it
        select exists (select 1 from durable.tasks t
                        where t.task_id >= durable.uuidv7_floor(
                                  (v_part.day::timestamp) at time zone 'UTC')
                          and t.task_id < durable.uuidv7_floor(
                                  ((v_part.day + 1)::timestamp) at time zone 'UTC'))
          into v_live;
        continue when v_live;
        perform durable.forget_tasks(
            durable.uuidv7_floor((v_part.day::timestamp) at time zone 'UTC'),
            durable.uuidv7_floor(((v_part.day + 1)::timestamp) at time zone 'UTC'));
        execute format('drop table durable.%I, durable.%I, durable.%I', v_part.relname,
                       'runs_history_' || to_char(v_part.day, 'YYYYMMDD'),
                       'checkpoints_history_' || to_char(v_part.day, 'YYYYMMDD'));
        v_count := v_count + 1;
    end loop;
    return v_count;
end $$;

-- What tasks leave outside the task tables, deleted (retention deletes or drops the task rows
-- themselves): the idempotency key rows that still point at them (a key taken again since
-- points at its new task and stays), waits, dependency edges, the edges of waits for several
-- tasks, messages, published state and batch memberships. The tasks are p_task_ids (prune's
-- batches: an index probe per task and table) or, when that is null, those of ids
-- [p_from, p_to) (a day of history dropped whole: a range scan per table, where a probe per task
-- of the day would read every task of the partition to drop, and probe 7 tables for each).
-- The one list of those tables: forget_task_ids and forget_tasks call this. The ids come in
-- through a subquery: planned as an unknown set, they make a nested loop of index probes, where
-- a constant array of thousands of ids would be estimated element by element at each call.
create or replace function durable.forget_side_rows(p_task_ids uuid[], p_from uuid, p_to uuid)
returns void
language plpgsql as $$
declare
    v_table text;
begin
    foreach v_table in array array['task_keys', 'waits', 'task_dependencies', 'wait_children',
                                   'messages', 'states', 'batch_members'] loop
        if p_task_ids is not null then
            execute format('delete from durable.%I x using unnest((select $1::uuid[])) as i(id)'
                           ' where x.task_id = i.id', v_table)
              using p_task_ids;
        else
            execute format('delete from durable.%I x where x.task_id >= $1 and x.task_id < $2',
                           v_table)
              using p_from, p_to;
        end if;
    end loop;
end $$;

-- Delete what tasks p_task_ids leave outside the task tables (durable.forget_side_rows).
create or replace function durable.forget_task_ids(p_task_ids uuid[]) returns void
language sql as $$
    select durable.forget_side_rows(p_task_ids, null, null) where cardinality(p_task_ids) > 0
$$;

-- Delete what the tasks of ids [p_from, p_to) leave outside the task tables
-- (durable.forget_side_rows).
create or replace function durable.forget_tasks(p_from uuid, p_to uuid) returns void
language sql as $$
    select durable.forget_side_rows(null, p_from, p_to)
$$;
