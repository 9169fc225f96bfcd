
/* sql/parts/30_steps.sql: steps, Dataverse's asynchronous plug-in steps on table events */

--------------------------------------------------------------------------
-- Registrations
--------------------------------------------------------------------------

-- One row per (table, event, operation).  register_step keeps one AFTER
-- ROW trigger per (table, event) -- asyncjobs_step_insert, _update or
-- _delete -- whenever at least one row here names them; the trigger
-- enqueues one job per operation registered for its event.
CREATE TABLE asyncjobs.step (
    target      regclass    NOT NULL,
    event       text        NOT NULL CHECK (event IN ('INSERT', 'UPDATE', 'DELETE')),
    operation   text        NOT NULL,
    owner       regrole     NOT NULL,
    createdon   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, event, operation)
);

COMMENT ON TABLE asyncjobs.step IS
'steps: each committed INSERT, UPDATE or DELETE on target enqueues one job of operation';

-- The per-row limit counts the recent jobs of one operation about one row.
CREATE INDEX job_regarding_idx ON asyncjobs.job (regardingobjectid, messagename)
    WHERE regardingobjectid IS NOT NULL;
CREATE INDEX job_history_regarding_idx
    ON asyncjobs.job_history (regardingobjectid, messagename, completedon)
    WHERE regardingobjectid IS NOT NULL;

--------------------------------------------------------------------------
-- The trigger
--------------------------------------------------------------------------

-- Fires AFTER each row of an event that has steps.  SECURITY INVOKER on
-- purpose: asyncjobs.enqueue runs as the role whose write fired the
-- trigger, so that role owns the jobs, they run as that role, and it must
-- be allowed to execute the operations' handlers -- as if it had called
-- enqueue itself in its transaction (which is what happens: the jobs
-- exist only if the write commits).
--
-- On a partitioned table the trigger is cloned to the partitions and fires
-- with a partition as TG_RELID: the table whose steps apply is the one of
-- the trigger the clone comes from (pg_trigger.tgparentid, up to the top).
-- No OID is stored in the trigger's arguments, so a dump restores it as is.
CREATE FUNCTION asyncjobs._step_trigger()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    step_ops  text[];
    tbl_name  text;
    pk_cols   text[];
    payload   jsonb;
    row_data  jsonb;
    row_key   text;
    op_name   text;
    new_job   bigint;
BEGIN
    WITH RECURSIVE up AS (
        SELECT t.tgrelid, t.tgparentid FROM pg_trigger t
         WHERE t.tgrelid = TG_RELID AND t.tgname = TG_NAME
        UNION ALL
        SELECT t.tgrelid, t.tgparentid FROM pg_trigger t JOIN up ON t.oid = up.tgparentid)
    SELECT (SELECT array_agg(s.operation ORDER BY s.operation)
              FROM asyncjobs.step s
             WHERE s.target = c.oid AND s.event = TG_OP),
           format('%I.%I', n.nspname, c.relname),
           (SELECT array_agg(a.attname::text ORDER BY k.ord)
              FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary)
      INTO step_ops, tbl_name, pk_cols
      FROM up
      JOIN pg_class c ON c.oid = up.tgrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE up.tgparentid = 0;
    IF step_ops IS NULL THEN
        RETURN NULL;
    END IF;

    payload := jsonb_build_object('table', tbl_name, 'event', TG_OP);
    IF TG_OP <> 'DELETE' THEN
        payload := payload || jsonb_build_object('new', to_jsonb(NEW));
    END IF;
    IF TG_OP <> 'INSERT' THEN
        payload := payload || jsonb_build_object('old', to_jsonb(OLD));
    END IF;

    -- the record: its key after the change (before it, for DELETE)
    row_data := CASE WHEN TG_OP = 'DELETE' THEN payload->'old' ELSE payload->'new' END;
    IF cardinality(pk_cols) = 1 THEN
        row_key := row_data->>pk_cols[1];
    ELSIF cardinality(pk_cols) > 1 THEN
        SELECT jsonb_agg(row_data->u.col ORDER BY u.ord)::text INTO row_key
          FROM unnest(pk_cols) WITH ORDINALITY AS u(col, ord);
    END IF;

    FOREACH op_name IN ARRAY step_ops LOOP
        new_job := asyncjobs.enqueue(op_name, payload,
                                     name => format('%s on %s (%s)', op_name, tbl_name, TG_OP),
                                     regarding => row_key);
        IF row_key IS NOT NULL THEN
            -- Dataverse's second loop rule: Canceled at once when the step
            -- fired more than 16 times for this row within an hour
            PERFORM asyncjobs._step_fired(new_job);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION asyncjobs._step_trigger() IS
'trigger of asyncjobs steps: enqueues, as the writing role, one job per operation registered for the event';

--------------------------------------------------------------------------
-- The per-row limit
--------------------------------------------------------------------------

-- A job that a step just enqueued (still waiting, owned by the caller) is
-- Canceled at once, with errorcode AJ005, when it is more than the 16th
-- job of its operation about the same row of the same table created
-- within the last hour.  Returns whether it canceled the job.
--
-- It runs as the extension's owner through asyncjobs._step_fired (the
-- asyncjobs_api_call trampoline), so it counts every role's jobs (the
-- limit is about the row, not who wrote it) whatever the caller may see.
-- It decides everything itself -- the caller names only a job it may
-- manage, and only the fixed message below is written -- so calling
-- _step_fired directly gives no more than asyncjobs.cancel() does.
CREATE FUNCTION asyncjobs.__step_fired_impl(caller regrole, job_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    limit_runs constant int := 16;
    j       asyncjobs.job%ROWTYPE;
    tbl     text;
    runs    bigint;
    friendly text;
BEGIN
    PERFORM asyncjobs._require_job(job_id);
    SELECT * INTO j FROM asyncjobs.job WHERE asyncoperationid = job_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM asyncjobs._completed_status(caller, job_id);
        RETURN false;
    END IF;
    PERFORM asyncjobs._check_manage(caller, j.ownerid, job_id);

    tbl := j.data->>'table';
    IF j.statecode NOT IN (0, 1) OR j.regardingobjectid IS NULL OR tbl IS NULL
       OR NOT j.data ? 'event' THEN
        RETURN false;
    END IF;

    SELECT (SELECT count(*) FROM asyncjobs.job a
             WHERE a.regardingobjectid = j.regardingobjectid
               AND a.messagename = j.messagename
               AND a.createdon > now() - interval '1 hour'
               AND a.data->>'table' = tbl)
         + (SELECT count(*) FROM asyncjobs.job_history h
             WHERE h.regardingobjectid = j.regardingobjectid
               AND h.messagename = j.messagename
               AND h.completedon > now() - interval '1 hour'
               AND h.createdon > now() - interval '1 hour'
               AND h.data->>'table' = tbl)
      INTO runs;
    IF runs <= limit_runs THEN
        RETURN false;
    END IF;

    friendly := format('canceled: step "%s" on %s (%s) fired more than %s times for row %s within an hour, '
                       'which usually means a loop (its job writes the row that fires it); '
                       'make the handler skip rows it has already handled, or unregister the step',
                       j.messagename, tbl, j.data->>'event', limit_runs, j.regardingobjectid);
    PERFORM asyncjobs._finish(job_id, 32::smallint, NULL, NULL, NULL, 'AJ005',
        format('ERROR:  step "%s" on %s (%s) fired more than %s times for row %s within an hour',
               j.messagename, tbl, j.data->>'event', limit_runs, j.regardingobjectid)
        || E'\nDETAIL:  ' || format('This is job %s of operation "%s" about this row of %s created in the last hour; '
                                    'from the %sth on, a step''s jobs are canceled as soon as they are enqueued.',
                                    runs, j.messagename, tbl, limit_runs + 1)
        || E'\nHINT:  ' || 'This usually means a loop: the step''s job writes the row that fires the step. '
                        || 'Have the handler return early when the row already holds what it would write '
                        || '(or write only when a value changes), or remove the step with asyncjobs.unregister_step().',
        friendly, NULL, j.statuscode);
    RETURN true;
END
$$;

CREATE FUNCTION asyncjobs._step_fired(job bigint)
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs._step_fired(bigint) IS
'internal (called by the step trigger): cancels the caller''s new step job when its step fired more than 16 times for the row within an hour';

--------------------------------------------------------------------------
-- register_step, unregister_step
--------------------------------------------------------------------------

-- Checks the arguments common to both and that the caller may manage the
-- table's triggers; returns the event in upper case.
CREATE FUNCTION asyncjobs._step_check(caller regrole, target regclass, event text,
                                      operation text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ev  text;
    rel record;
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'target must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF event IS NULL THEN
        RAISE EXCEPTION 'event must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF operation IS NULL THEN
        RAISE EXCEPTION 'operation must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    ev := upper(event);
    IF ev NOT IN ('INSERT', 'UPDATE', 'DELETE') THEN
        RAISE EXCEPTION 'invalid event "%"', event
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A step fires on INSERT, UPDATE or DELETE.';
    END IF;

    SELECT c.relkind, c.relowner, c.relpersistence, n.nspname
      INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', target::oid
            USING ERRCODE = 'undefined_table';
    END IF;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', target
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'Steps fire on events of ordinary and partitioned tables only.';
    END IF;
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION '"%" is a temporary table', target
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Jobs run in other sessions, where the table does not exist.';
    END IF;
    IF rel.nspname = 'asyncjobs' THEN
        RAISE EXCEPTION 'steps cannot fire on the tables of asyncjobs'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF NOT pg_has_role(caller::oid, rel.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of table %', target
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the table''s owner, roles with its privileges and superusers may register or unregister its steps.';
    END IF;
    RETURN ev;
END
$$;

CREATE FUNCTION asyncjobs._register_step_impl(caller regrole, target regclass,
                                              event text, operation text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ev    text;
    tg    text;
    other text;
    op_row asyncjobs.operation_type%ROWTYPE;
BEGIN
    ev := asyncjobs._step_check(caller, target, event, operation);
    SELECT * INTO op_row FROM asyncjobs.operation_type o WHERE o.name = operation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'operation "%" is not registered', operation
            USING ERRCODE = 'undefined_object',
                  HINT = 'Register it with asyncjobs.register_operation().';
    END IF;
    IF op_row.builtin THEN
        RAISE EXCEPTION 'built-in operation "%" cannot be a step', operation
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Register an operation whose handler takes the changed row as jsonb.';
    END IF;
    -- enqueue checks this again at every write, for the writing role
    IF op_row.handler IS NOT NULL
       AND NOT has_function_privilege(caller::oid, op_row.handler::oid, 'EXECUTE') THEN
        RAISE EXCEPTION 'permission denied for function %', op_row.handler
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Jobs of operation "%s" run this handler as the role whose write fires the step.', operation),
                  HINT = 'Ask the function''s owner to GRANT EXECUTE on it.';
    END IF;

    -- one registration or unregistration of the table's steps at a time
    -- (the lock CREATE TRIGGER takes anyway)
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', target);

    -- The steps of a partitioned table fire for every row of its
    -- partitions, through clones of its triggers that bear the same name:
    -- a partition and a table above it cannot both have steps on an event.
    tg := 'asyncjobs_step_' || lower(ev);
    SELECT format('%I.%I', n.nspname, c.relname) INTO other
      FROM pg_trigger t
      JOIN pg_class c ON c.oid = t.tgrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE t.tgname = tg AND t.tgparentid = 0
       AND t.tgrelid IN (SELECT a.relid FROM pg_partition_ancestors(target) a
                          WHERE a.relid <> target)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'partitioned table % has steps on %, which fire for its partition % too',
                        other, ev, target
            USING ERRCODE = 'duplicate_object',
                  HINT = format('Register the step on %s, or detach the partition.', other);
    END IF;
    SELECT format('%I.%I', n.nspname, c.relname) INTO other
      FROM pg_trigger t
      JOIN pg_class c ON c.oid = t.tgrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE t.tgname = tg AND t.tgparentid = 0
       AND t.tgrelid IN (SELECT p.relid FROM pg_partition_tree(target) p
                          WHERE p.relid <> target)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'partition % of % has steps on % of its own', other, target, ev
            USING ERRCODE = 'duplicate_object',
                  HINT = format('The steps of %s would fire for the rows of %s too: unregister those of %s first.',
                                target, other, other);
    END IF;

    INSERT INTO asyncjobs.step (target, event, operation, owner)
    VALUES (target, ev, operation, caller)
    ON CONFLICT DO NOTHING;
    -- (re)created every time: registering again repairs a dropped trigger
    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION asyncjobs._step_trigger()', tg, ev, target);
END
$$;

CREATE FUNCTION asyncjobs._unregister_step_impl(caller regrole, target regclass,
                                                event text, operation text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ev text;
BEGIN
    ev := asyncjobs._step_check(caller, target, event, operation);
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', target);
    DELETE FROM asyncjobs.step s
     WHERE s.target = _unregister_step_impl.target AND s.event = ev
       AND s.operation = _unregister_step_impl.operation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step "%" is not registered for % on %', operation, ev, target
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM asyncjobs.step s
                    WHERE s.target = _unregister_step_impl.target AND s.event = ev) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
                       'asyncjobs_step_' || lower(ev), target);
    END IF;
END
$$;

CREATE FUNCTION asyncjobs.register_step(target regclass, event text, operation text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.register_step(regclass, text, text) IS
'each committed INSERT, UPDATE or DELETE (event) of a row of target enqueues a job of operation, owned by the writing role';

CREATE FUNCTION asyncjobs.unregister_step(target regclass, event text, operation text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.unregister_step(regclass, text, text) IS
'removes a step registered with asyncjobs.register_step';

--------------------------------------------------------------------------
-- A dropped table takes its steps with it
--------------------------------------------------------------------------

-- (Its triggers go with it anyway; without this its rows here would stay,
-- and apply to a new table that happened to get the same OID.)
CREATE FUNCTION asyncjobs._step_dropped()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- DROP EXTENSION asyncjobs, or DROP SCHEMA asyncjobs CASCADE
    IF to_regclass('asyncjobs.step') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM asyncjobs.step s
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0
       AND s.target = d.objid;
END
$$;

CREATE EVENT TRIGGER asyncjobs_step_dropped ON sql_drop
    EXECUTE FUNCTION asyncjobs._step_dropped();

SELECT pg_catalog.pg_extension_config_dump('asyncjobs.step', '');
