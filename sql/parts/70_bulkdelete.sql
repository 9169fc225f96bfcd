
/* sql/parts/70_bulkdelete.sql: bulk delete jobs (operationtype 13) */

-- Run by the background workers (src/bulkdelete.c): in batches, one
-- transaction per batch, as the job's owner.
INSERT INTO asyncjobs.operation_type (name, operationtype, builtin, max_retries, timeout)
VALUES ('bulk_delete', 13, true, 5, '10 minutes');

-- Progress of each bulk delete job, written in the transaction of each
-- batch: a crash loses nothing and counts nothing twice.
CREATE TABLE asyncjobs.bulkdelete_progress (
    asyncoperationid    bigint      PRIMARY KEY,
    successcount        bigint      NOT NULL DEFAULT 0,
    failurecount        bigint      NOT NULL DEFAULT 0,
    batches             int         NOT NULL DEFAULT 0,
    lastbatchon         timestamptz
);

-- One row per row a bulk delete could not delete (Dataverse's
-- BulkDeleteFailure): the row's primary key, the SQLSTATE and the error.
CREATE TABLE asyncjobs.bulkdeletefailure (
    asyncoperationid    bigint      NOT NULL,
    regardingobjectid   text        NOT NULL,
    errornumber         text        NOT NULL,
    errordescription    text        NOT NULL,
    createdon           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (asyncoperationid, regardingobjectid)
);

COMMENT ON TABLE asyncjobs.bulkdeletefailure IS
'rows a bulk delete job could not delete, with the error';

CREATE VIEW asyncjobs.bulkdeleteoperation AS
SELECT a.asyncoperationid AS bulkdeleteoperationid,
       a.asyncoperationid,
       a.name,
       coalesce(p.successcount, 0) AS successcount,
       coalesce(p.failurecount, 0) AS failurecount,
       a.recurrencepattern IS NOT NULL AS isrecurring,
       CASE WHEN a.statecode <> 3 THEN coalesce(a.postponeuntil, a.createdon) END AS nextrun,
       a.statecode,
       a.statuscode,
       (a.data->>'target_oid')::oid::regclass AS target,
       a.data->>'condition' AS condition,
       coalesce(p.batches, 0) AS batches,
       p.lastbatchon,
       a.ownerid
  FROM asyncjobs.asyncoperation a
  LEFT JOIN asyncjobs.bulkdelete_progress p USING (asyncoperationid)
 WHERE a.operationtype = 13;

COMMENT ON VIEW asyncjobs.bulkdeleteoperation IS
'bulk delete jobs and their progress, with Dataverse''s columns';

-- Checks that a bulk delete condition is one boolean expression (no
-- statement separators, no set operations): parsed only, never run here.
CREATE FUNCTION asyncjobs._check_condition(condition text)
RETURNS void
LANGUAGE C STRICT IMMUTABLE
AS 'MODULE_PATHNAME', 'asyncjobs_check_condition';

-- The expression of a table's primary key as text, as recorded in
-- regardingobjectid: the value of a one-column key, ROW(...)::text of a
-- composite one; columns are qualified with the given alias.
CREATE FUNCTION asyncjobs._key_expression(target regclass, alias text DEFAULT 't')
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN count(*) = 1
                THEN format('(%I.%I)::text', alias, min(a.attname))
                ELSE format('ROW(%s)::text',
                            string_agg(format('%I.%I', alias, a.attname), ', ' ORDER BY k.n))
           END
      FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = target AND i.indisprimary
    HAVING count(*) > 0
$$;

-- Queues a bulk delete: rows of target matching condition are deleted in
-- batches of batch_size, as the caller, from start_at on (again on each
-- recurrence), only inside the daily window when one is given.
CREATE FUNCTION asyncjobs.bulk_delete(target regclass, condition text,
                                      name text DEFAULT NULL,
                                      batch_size int DEFAULT 5000,
                                      start_at timestamptz DEFAULT NULL,
                                      recurrence text DEFAULT NULL,
                                      window_start time DEFAULT NULL,
                                      window_end time DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'target must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF condition IS NULL THEN
        RAISE EXCEPTION 'condition must not be NULL' USING ERRCODE = 'null_value_not_allowed',
              HINT = 'To delete every row, pass the condition ''true''.';
    ELSIF btrim(condition, E' \t\n\r\f' || chr(11)) = '' THEN
        RAISE EXCEPTION 'condition must not be empty' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'To delete every row, pass the condition ''true''.';
    ELSIF batch_size IS NULL THEN
        RAISE EXCEPTION 'batch_size must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF batch_size < 1 OR batch_size > 100000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 100000'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF NOT isfinite(start_at) THEN
        RAISE EXCEPTION 'start_at must be a finite timestamp'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF (window_start IS NULL) <> (window_end IS NULL) THEN
        RAISE EXCEPTION 'window_start and window_end go together'
            USING ERRCODE = 'invalid_parameter_value';
    -- 24:00 to 00:00 is empty too: no time of day is at or after 24:00
    ELSIF window_start = window_end OR (window_start = '24:00' AND window_end = '00:00') THEN
        RAISE EXCEPTION 'the window must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Leave both NULL to delete at any time of day.';
    END IF;
    SELECT c.relkind, c.relpersistence, n.nspname INTO rel
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'relation with OID % does not exist', target::oid
            USING ERRCODE = 'undefined_table';
    ELSIF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', target USING ERRCODE = 'wrong_object_type';
    ELSIF rel.relpersistence = 't' THEN
        RAISE EXCEPTION '"%" is a temporary table', target
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Bulk delete jobs run in other sessions, where the table does not exist.';
    ELSIF rel.nspname = 'asyncjobs' THEN
        RAISE EXCEPTION 'bulk delete cannot target the tables of asyncjobs'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Completed jobs are purged by asyncjobs.cleanup().';
    END IF;
    IF asyncjobs._key_expression(target) IS NULL THEN
        RAISE EXCEPTION 'table "%" has no primary key', target
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A bulk delete records each row it cannot delete by its primary key.';
    END IF;
    IF NOT has_table_privilege(target, 'DELETE') OR NOT has_table_privilege(target, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for table %', target
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'A bulk delete runs as the role that queues it, which needs SELECT and DELETE on the table.';
    END IF;
    PERFORM asyncjobs._check_condition(condition);

    RETURN asyncjobs.enqueue('bulk_delete',
        jsonb_build_object('target', target::text, 'target_oid', target::oid,
                           'condition', condition, 'batch_size', batch_size,
                           'window_start', window_start, 'window_end', window_end),
        name => coalesce(name, 'Bulk delete of ' || target::text),
        postpone_until => start_at,
        recurrence => recurrence,
        regarding => target::text);
END
$$;

COMMENT ON FUNCTION asyncjobs.bulk_delete(regclass, text, text, int, timestamptz, text, time, time) IS
'queues a bulk delete job (operationtype 13) of the rows of a table that match a condition';

-- Sends a bulk delete outside its window back to wait for the window's next
-- start, without counting an attempt.
CREATE FUNCTION asyncjobs._bulk_delete_wait(job_id bigint, next_run timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE asyncjobs.job
       SET statecode = 1, statuscode = 10, postponeuntil = next_run,
           runafter = next_run, modifiedon = clock_timestamp(),
           lockedby = NULL, hostid = NULL
     WHERE asyncoperationid = job_id AND statuscode = 20;
    RETURN FOUND;
END
$$;

-- When "now" is outside the daily window [ws, we) (in the server's time
-- zone; a window may span midnight), the window's next start; else NULL.
CREATE FUNCTION asyncjobs._window_wait(ws time, we time)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t     time := localtime;
    opens timestamptz;
BEGIN
    IF ws IS NULL OR (ws < we AND t >= ws AND t < we)
       OR (ws > we AND (t >= ws OR t < we)) THEN
        RETURN NULL;
    END IF;
    opens := date_trunc('day', now()) + ws;
    IF opens <= now() THEN
        opens := opens + interval '1 day';
    END IF;
    RETURN opens;
END
$$;

-- Counts a batch (in the batch's transaction).
CREATE FUNCTION asyncjobs._bulk_delete_progress(job_id bigint, deleted bigint, failed bigint)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO asyncjobs.bulkdelete_progress AS p
           (asyncoperationid, successcount, failurecount, batches, lastbatchon)
    VALUES (job_id, deleted, failed, 1, clock_timestamp())
    ON CONFLICT (asyncoperationid) DO UPDATE
       SET successcount = p.successcount + deleted,
           failurecount = p.failurecount + failed,
           batches = p.batches + 1,
           lastbatchon = clock_timestamp()
$$;

SELECT pg_catalog.pg_extension_config_dump('asyncjobs.bulkdelete_progress', '');
SELECT pg_catalog.pg_extension_config_dump('asyncjobs.bulkdeletefailure', '');
