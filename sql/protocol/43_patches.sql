-- Versioning in flight. A task can live for days, and its handler's code can change meanwhile;
-- a run replays the handler from the top, so new code must not take another branch than the one
-- a task's recorded steps came from. A patch marks the point where the code changed: every task
-- decides once, at that point, whether it takes the new path, and records the decision as the
-- checkpoint of the patch's step ('$patch:<change id>').

-- Whether the run takes the new path at patch step p_step (it must start with '$patch:'),
-- decided once. p_passed lists the steps (checkpoint names, in this run's order) the handler has
-- passed in this run before reaching the patch. A task whose history goes beyond them (a
-- checkpoint or a wait of a step it has not passed yet) went past this point before the patch
-- existed: it keeps the old path (false). A task at the end of its history reaches the point for
-- the first time: the new path (true). Other patches' decisions are not history, so the call of
-- a retired patch can be removed from the code. Fenced like every write of a run.
create or replace function durable.decide_patch(p_queue text, p_run_id uuid, p_step text,
                                                p_passed text[])
returns boolean
language plpgsql
security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_now   timestamptz := durable.now();
    v_run   durable.runs;
    v_value jsonb;
    v_new   boolean;
begin
    if p_step is null or left(p_step, 7) <> '$patch:' or length(p_step) = 7 then
        raise exception 'a patch step is named $patch:<change id>, got %',
            coalesce(quote_literal(p_step), 'NULL') using errcode = 'DU005';
    end if;
    v_run := durable.lock_live_run(p_queue, p_run_id, v_now);
    select k.value into v_value from durable.checkpoints k
     where k.task_id = v_run.task_id and k.step_name = p_step;
    if found then
        return v_value = 'true';
    end if;
    v_new := not exists (select 1 from durable.checkpoints k
                          where k.task_id = v_run.task_id
                            and k.step_name <> all(coalesce(p_passed, '{}'))
                            and left(k.step_name, 7) <> '$patch:')
         and not exists (select 1 from durable.waits w
                          where w.task_id = v_run.task_id
                            and w.step_name <> all(coalesce(p_passed, '{}')));
    perform durable.record_step(v_run.task_id, p_step, to_jsonb(v_new), p_run_id, v_now);
    return v_new;
end $$;
