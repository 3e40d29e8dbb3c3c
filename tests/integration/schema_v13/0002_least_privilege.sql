-- Least privilege: a worker (or a producer) can be given a role that runs the protocol and
-- nothing else.
--
-- ROLE durable_worker (NOLOGIN, cluster-wide) holds exactly:
--   * USAGE on schema durable;
--   * EXECUTE on the protocol functions listed below (spawn ... list_failed_runs);
--   * SELECT on durable.schema_migrations, so a client opened with migrate=False can check the
--     schema version (durable.migrate.check_schema).
-- It holds no privilege on durable.tasks, runs, checkpoints or workers: it cannot read, change or
-- delete a row except through the protocol, which checks leases and arguments. Grant it to a
-- LOGIN role of your own:  create role my_worker login password '...' in role durable_worker;
-- LISTEN (wake-ups) needs no privilege.
--
-- The protocol functions become SECURITY DEFINER: they run with the privileges of their owner (the
-- role that applied the migrations), so the caller needs none on the tables. Each pins
-- search_path to pg_catalog, pg_temp (pg_temp last, so a caller's temporary objects can never
-- shadow a name); every table, type and function of durable they use is schema-qualified. The
-- internal helpers (check_queue, lock_live_run, fail_locked_run, reap_runs, ...) keep running as
-- the invoker, which inside a protocol function is the owner; nobody else may call them.
--
-- EXECUTE on every existing durable function is revoked from PUBLIC. A function a later migration
-- adds is executable by PUBLIC by default (PostgreSQL's default privilege); that is harmless for
-- an ordinary function, which runs with its caller's privileges, but a migration that adds a
-- SECURITY DEFINER function must revoke EXECUTE from PUBLIC and grant it to durable_worker, or
-- call durable.grant_worker_privileges().
--
-- Creating the role needs CREATEROLE. When the migrating role lacks it the migration still
-- applies, with a NOTICE; a DBA then runs
--     create role durable_worker nologin;
-- and the schema owner runs
--     select durable.grant_worker_privileges();

-- Grant durable_worker what it needs: the protocol is the set of SECURITY DEFINER functions of
-- schema durable. Idempotent; returns false (doing nothing) when the role does not exist.
create function durable.grant_worker_privileges() returns boolean
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
    for v_fn in
        select p.oid::regprocedure from pg_catalog.pg_proc p
         where p.pronamespace = 'durable'::regnamespace and p.prosecdef
    loop
        execute pg_catalog.format('grant execute on function %s to durable_worker', v_fn);
    end loop;
    return true;
end $$;

revoke execute on all functions in schema durable from public;

alter function durable.spawn(text, text, jsonb, jsonb)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.spawn_many(text, jsonb)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.claim(text, text, double precision, integer)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.complete(text, uuid, jsonb)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.fail(text, uuid, jsonb, text, timestamptz, double precision)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.extend_claim(text, uuid, double precision)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.extend_claims(text, uuid[], double precision)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.set_checkpoint(text, uuid, text, jsonb, double precision)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.get_checkpoints(text, uuid)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.schedule_run(text, uuid, double precision)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.cancel(text, uuid)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.retry(text, uuid, jsonb)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.get_task(text, uuid)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.get_result(text, uuid)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.register_worker(text, text, integer, text[], double precision)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.worker_heartbeat(text, double precision)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.stop_worker(text)
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.queue_counts()
    security definer set search_path = pg_catalog, pg_temp;
alter function durable.list_failed_runs(text, integer)
    security definer set search_path = pg_catalog, pg_temp;

do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'durable_worker') then
        begin
            create role durable_worker nologin;
        exception
            -- another database of this cluster created it concurrently
            when duplicate_object or unique_violation then null;
            when insufficient_privilege then
                raise notice 'durable: role durable_worker not created (no CREATEROLE): a DBA can run '
                             '"create role durable_worker nologin", then the schema owner '
                             '"select durable.grant_worker_privileges()"';
        end;
    end if;
    perform durable.grant_worker_privileges();
end $$;
