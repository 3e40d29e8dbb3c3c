-- Least privilege: a worker (or a producer) can be given a role that runs the protocol and
-- nothing else.
--
-- ROLE durable_worker (NOLOGIN, cluster-wide) holds exactly:
--   * USAGE on schema durable;
--   * EXECUTE on the protocol functions: the SECURITY DEFINER functions of schema durable;
--   * SELECT on durable.schema_migrations and durable.applied_protocol, so that a client opened
--     with migrate=False can check the schema and the protocol (durable.protocol.migrate).
-- It holds no privilege on durable.tasks, runs, checkpoints, workers or any other table: it
-- cannot read, change or delete a row except through the protocol, which checks leases and
-- arguments. Grant it to a LOGIN role of your own:
--     create role my_worker login password '...' in role durable_worker;
-- LISTEN (wake-ups) needs no privilege.
--
-- The protocol functions are SECURITY DEFINER: they run with the privileges of their owner (the
-- role that migrates), so the caller needs none on the tables. Each pins search_path to
-- pg_catalog, pg_temp (pg_temp last, so a caller's temporary objects can never shadow a name);
-- every table, type and function of durable they use is schema-qualified. The internal helpers
-- (check_queue, lock_live_run, fail_locked_run, reap_runs, ...) and the operator's functions
-- (prune_tasks, prune_bookkeeping, grant_worker_privileges) run as their caller, and only the
-- owner may call them: EXECUTE on every function of durable is revoked from PUBLIC below, after
-- every file before this one has created its functions (a new function is executable by PUBLIC
-- until then, PostgreSQL's default).
--
-- Creating the role needs CREATEROLE. When the migrating role lacks it the protocol still
-- applies, with a NOTICE; a DBA then runs
--     create role durable_worker nologin;
-- and the schema owner runs
--     select durable.grant_worker_privileges();

-- Grant durable_worker what it needs: the protocol is the set of SECURITY DEFINER functions of
-- schema durable. Idempotent; returns false (doing nothing) when the role does not exist.
create or replace function durable.grant_worker_privileges() returns boolean
language plpgsql as $$
declare
    v_fn regprocedure;
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'durable_worker') then
        return false;
    end if;
    grant usage on schema durable to durable_worker;
    if pg_catalog.to_regclass('durable.schema_migrations') is not null then  -- durable.migrate's
        grant select on table durable.schema_migrations to durable_worker;
    end if;
    if pg_catalog.to_regclass('durable.applied_protocol') is not null then
        grant select on table durable.applied_protocol to durable_worker;
    end if;
    for v_fn in
        select p.oid::regprocedure from pg_catalog.pg_proc p
         where p.pronamespace = 'durable'::regnamespace and p.prosecdef
    loop
        execute pg_catalog.format('grant execute on function %s to durable_worker', v_fn);
    end loop;
    return true;
end $$;

revoke execute on all functions in schema durable from public;

do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'durable_worker') then
        begin
            create role durable_worker nologin;
        exception
            -- another database of this cluster created it concurrently
            when duplicate_object or unique_violation then null;
            when insufficient_privilege then
                raise notice 'durable: role durable_worker not created (no CREATEROLE): a DBA can '
                             'run "create role durable_worker nologin", then the schema owner '
                             '"select durable.grant_worker_privileges()"';
        end;
    end if;
    perform durable.grant_worker_privileges();
end $$;
