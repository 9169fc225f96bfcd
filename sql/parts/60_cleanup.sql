
/* sql/parts/60_cleanup.sql: retention (cleanup) and its pg_cron schedule */

--------------------------------------------------------------------------
-- cleanup(): purge completed jobs past their retention
--------------------------------------------------------------------------
--
-- Completed jobs are in asyncjobs.job_history, one partition per UTC day
-- of completedon.  A partition is dropped whole when every row in it is
-- past its own status's retention: its upper bound is at or before the
-- cutoff (now() - retention) of every status that has rows in it.  Which
-- statuses have rows is asked of the partition's (statuscode, completedon)
-- index, one probe per status, never by reading the partition.  In the
-- other partitions (the boundary days, and days past the shortest
-- retention that still hold rows of a longer-kept status) only the rows
-- past their status's retention are deleted.  Active jobs
-- (asyncjobs.job) are never looked at.
--
-- The rows of a dropped partition are counted before the drop (the
-- return value is exact): count(*) of a partition the planner answers
-- from its smallest index (an index-only scan of the bigint id index on a
-- vacuumed partition), which reads no row and writes nothing.
--
-- Locks, so that workers moving jobs into today's partition wait at most
-- a moment:
--   1. each partition to drop is locked SHARE (it blocks writes to that old
--      partition only; nobody writes there) while its statuses are probed
--      and its rows counted;
--   2. then the parent, which DROP TABLE of a partition locks ACCESS
--      EXCLUSIVE, is locked once for all the drops with a short
--      lock_timeout, retried a few times: every writer of history queues
--      behind that request for at most lock_timeout.
-- A partition (or the parent) that cannot be locked in time is skipped
-- and left for the next run, with a NOTICE; deletes in boundary
-- partitions take only ROW EXCLUSIVE on the partition itself.  The locks
-- are held until the calling transaction ends: call cleanup() on its own
-- (as pg_cron does), not inside a long transaction.

-- A retention is positive when none of its fields is negative and not all
-- are zero (the rule of the asyncjobs.retention_* settings, src/module.c).
CREATE FUNCTION asyncjobs._positive_interval(iv interval)
RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT extract(year FROM iv) * 12 + extract(month FROM iv) >= 0
       AND extract(day FROM iv) >= 0
       AND extract(hour FROM iv) * 3600 + extract(minute FROM iv) * 60
           + extract(second FROM iv) >= 0
       AND iv <> interval '0'
$$;

-- The retention to apply: the argument, else the setting.
CREATE FUNCTION asyncjobs._retention(arg interval, setting text)
RETURNS interval
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text := 'asyncjobs.retention_' || setting;
BEGIN
    IF arg IS NULL THEN
        RETURN current_setting(name)::interval;
    END IF;
    IF NOT asyncjobs._positive_interval(arg) THEN
        RAISE EXCEPTION 'retention % must be a positive interval, not %', setting, arg
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('Pass NULL to use the setting %s (now %s).',
                                name, current_setting(name));
    END IF;
    RETURN arg;
END
$$;

-- The time before which rows past a retention are purged: now() -
-- retention, or -infinity (keep everything) for a retention that reaches
-- past the start of the calendar ('1000000 years').
CREATE FUNCTION asyncjobs._cutoff(retention interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN now() - retention;
EXCEPTION WHEN datetime_field_overflow THEN
    RETURN '-infinity';
END
$$;

-- Who may purge: cleanup deletes every role's jobs, so only roles with the
-- privileges of the extension's owner (superusers included).
CREATE FUNCTION asyncjobs._check_cleanup(caller regrole, what text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    owner_oid oid := (SELECT extowner FROM pg_extension WHERE extname = 'asyncjobs');
BEGIN
    IF NOT (pg_has_role(caller::oid, owner_oid, 'USAGE') OR asyncjobs._is_admin(caller)) THEN
        RAISE EXCEPTION 'permission denied for %', what
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'It purges the completed jobs of every role.',
                  HINT = format('Only superusers, members of asyncjobs_admin and roles with the privileges of the extension''s owner (%s) may run it.',
                                owner_oid::regrole);
    END IF;
END
$$;

-- The history partitions with their bounds (NULL for MINVALUE / MAXVALUE
-- or a default partition), oldest first.
CREATE FUNCTION asyncjobs._history_partitions()
RETURNS TABLE (part regclass, relname name, lo timestamptz, hi timestamptz,
               extension_member boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass, c.relname,
           substring(b.expr FROM $r$FROM \('([^']*)'\)$r$)::timestamptz,
           substring(b.expr FROM $r$TO \('([^']*)'\)$r$)::timestamptz,
           EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_extension'::regclass
                      AND d.deptype = 'e')
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
     -- (relid 0: a bound has no column references, and a relid would lock it)
     CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, 0) AS expr) b
     WHERE i.inhparent = 'asyncjobs.job_history'::regclass
     ORDER BY 3 NULLS LAST, 2
$$;

CREATE FUNCTION asyncjobs._cleanup_impl(caller regrole,
                                        succeeded interval DEFAULT NULL,
                                        failed interval DEFAULT NULL,
                                        canceled interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- statuscodes 30 Succeeded, 31 Failed, 32 Canceled and their cutoffs
    codes    smallint[] := ARRAY[30, 31, 32];
    cutoffs  timestamptz[];
    latest   timestamptz;       -- the latest cutoff (shortest retention)
    p        record;
    i        int;
    droppable boolean;
    n        bigint;
    purged   bigint := 0;
    skipped  int := 0;
    to_drop  regclass[] := '{}';
    members  boolean[] := '{}';
    counts   bigint[] := '{}';
    attempt  int;
    locked   boolean := false;
    trace_retention interval;
    wait     constant text := '200ms';   -- lock_timeout of every lock we take
BEGIN
    PERFORM asyncjobs._check_cleanup(caller, 'asyncjobs.cleanup()');
    cutoffs := ARRAY[asyncjobs._cutoff(asyncjobs._retention(succeeded, 'succeeded')),
                     asyncjobs._cutoff(asyncjobs._retention(failed, 'failed')),
                     asyncjobs._cutoff(asyncjobs._retention(canceled, 'canceled'))];
    trace_retention := asyncjobs._retention(NULL, 'trace');
    latest := greatest(cutoffs[1], cutoffs[2], cutoffs[3]);
    -- one cleanup at a time (a second one waits, then finds little to do)
    PERFORM pg_advisory_xact_lock(1634364018, 2);
    PERFORM set_config('lock_timeout', wait, true);

    FOR p IN SELECT * FROM asyncjobs._history_partitions() LOOP
        -- today's and future partitions, and any partition whose rows are
        -- all younger than every cutoff, hold nothing to purge
        CONTINUE WHEN p.lo IS NOT NULL AND p.lo >= latest;

        droppable := false;
        IF p.hi IS NOT NULL AND p.hi <= latest THEN
            -- past the shortest retention: a candidate for dropping
            BEGIN
                EXECUTE format('LOCK TABLE %s IN SHARE MODE', p.part);
                droppable := true;
                FOR i IN 1 .. 3 LOOP
                    CONTINUE WHEN p.hi <= cutoffs[i];
                    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE statuscode = $1)',
                                   p.part) INTO droppable USING codes[i];
                    droppable := NOT droppable;
                    EXIT WHEN NOT droppable;
                END LOOP;
                IF droppable THEN
                    -- rows of no known status would never be purged by the
                    -- deletes below: keep them out of a drop as well
                    EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %1$s WHERE statuscode < 30)
                                       AND NOT EXISTS (SELECT 1 FROM %1$s WHERE statuscode > 32)',
                                   p.part) INTO droppable;
                END IF;
                IF droppable THEN
                    EXECUTE format('SELECT count(*) FROM %s', p.part) INTO n;
                    to_drop := to_drop || p.part;
                    members := members || p.extension_member;
                    counts := counts || n;
                    CONTINUE;
                END IF;
            EXCEPTION WHEN lock_not_available THEN
                skipped := skipped + 1;
                CONTINUE;
            END;
        END IF;

        -- a boundary partition: delete the rows past their own retention
        BEGIN
            FOR i IN 1 .. 3 LOOP
                CONTINUE WHEN p.lo IS NOT NULL AND p.lo >= cutoffs[i];
                EXECUTE format('DELETE FROM %s WHERE statuscode = $1 AND completedon < $2',
                               p.part) USING codes[i], cutoffs[i];
                GET DIAGNOSTICS n = ROW_COUNT;
                purged := purged + n;
            END LOOP;
        EXCEPTION WHEN lock_not_available THEN
            skipped := skipped + 1;
        END;
    END LOOP;

    IF cardinality(to_drop) > 0 THEN
        -- DROP TABLE of a partition locks the parent ACCESS EXCLUSIVE: take
        -- it once for all the drops, waiting at most lock_timeout each try
        FOR attempt IN 1 .. 5 LOOP
            BEGIN
                LOCK TABLE asyncjobs.job_history IN ACCESS EXCLUSIVE MODE;
                locked := true;
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                PERFORM pg_sleep(0.05 * attempt);
            END;
        END LOOP;
        IF locked THEN
            FOR i IN 1 .. cardinality(to_drop) LOOP
                IF members[i] THEN
                    -- made by maintain_partitions() during CREATE EXTENSION
                    EXECUTE format('ALTER EXTENSION asyncjobs DROP TABLE %s', to_drop[i]);
                END IF;
                EXECUTE format('DROP TABLE %s', to_drop[i]);
                purged := purged + counts[i];
            END LOOP;
        ELSE
            skipped := skipped + cardinality(to_drop);
        END IF;
    END IF;

    -- the trace log (asyncjobs.plugintracelog, when it exists)
    IF to_regclass('asyncjobs.plugintracelog') IS NOT NULL THEN
        BEGIN
            EXECUTE 'DELETE FROM asyncjobs.plugintracelog WHERE createdon < $1'
                USING asyncjobs._cutoff(trace_retention);
            GET DIAGNOSTICS n = ROW_COUNT;
            purged := purged + n;
        EXCEPTION WHEN lock_not_available THEN
            skipped := skipped + 1;
        END;
    END IF;

    -- the monitoring figures (85_monitoring.sql) outlive the jobs, up to
    -- asyncjobs.retention_rollups; and when cleanup last ran, for health()
    IF to_regclass('asyncjobs.job_rollup') IS NOT NULL THEN
        BEGIN
            EXECUTE 'DELETE FROM asyncjobs.job_rollup WHERE bucket < $1'
                USING asyncjobs._cutoff(asyncjobs._retention(NULL, 'rollups'));
            EXECUTE 'DELETE FROM asyncjobs.backlog_sample WHERE sampled_at < $1'
                USING asyncjobs._cutoff(asyncjobs._retention(NULL, 'rollups'));
        EXCEPTION WHEN lock_not_available THEN
            skipped := skipped + 1;
        END;
        EXECUTE 'UPDATE asyncjobs.monitor_state SET last_cleanup = now(),
                        last_cleanup_result = jsonb_build_object(''purged'', $1::bigint, ''skipped'', $2::int)'
            USING purged, skipped;
    END IF;

    IF skipped > 0 THEN
        RAISE NOTICE 'asyncjobs.cleanup() skipped % table(s) it could not lock within %', skipped, wait
            USING HINT = 'Their rows stay until the next cleanup.';
    END IF;
    RETURN purged;
END
$$;

CREATE FUNCTION asyncjobs.cleanup(succeeded interval DEFAULT NULL,
                                  failed interval DEFAULT NULL,
                                  canceled interval DEFAULT NULL)
RETURNS bigint LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.cleanup(interval, interval, interval) IS
'purges completed jobs and trace log rows past their retention (NULL: the asyncjobs.retention_* setting); returns the rows purged';

--------------------------------------------------------------------------
-- schedule_cleanup(): the cleanup as a pg_cron job
--------------------------------------------------------------------------

-- Registers SELECT asyncjobs.cleanup() with pg_cron, to run in this
-- database as the caller, under the job name asyncjobs-cleanup-<database>:
-- pg_cron keeps one job per (name, user), so calling again replaces the
-- schedule (same job id).  Runs as the extension's owner (a superuser),
-- which pg_cron requires to schedule a job for another user or database.
CREATE FUNCTION asyncjobs._schedule_cleanup_impl(caller regrole, schedule text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job_name text := 'asyncjobs-cleanup-' || current_database();
    cron_db  text := current_setting('cron.database_name', true);
    username text := (SELECT rolname FROM pg_roles WHERE oid = caller::oid);
    jobid    bigint;
BEGIN
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'schedule must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Give a cron schedule, e.g. ''0 3 * * *'' (every day at 03:00 GMT).';
    ELSIF btrim(schedule) = '' THEN
        RAISE EXCEPTION 'schedule must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give a cron schedule, e.g. ''0 3 * * *'' (every day at 03:00 GMT).';
    END IF;
    PERFORM asyncjobs._check_cleanup(caller, 'asyncjobs.schedule_cleanup()');
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        IF cron_db IS NOT NULL AND cron_db <> current_database() THEN
            RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('pg_cron runs in database "%s" (cron.database_name). There, run: SELECT cron.schedule_in_database(%L, %L, %L, %L);',
                                    cron_db, job_name, schedule, 'SELECT asyncjobs.cleanup()',
                                    current_database());
        END IF;
        RAISE EXCEPTION 'pg_cron is not installed in database "%"', current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Install pg_cron: shared_preload_libraries = ''pg_cron'' (with asyncjobs) and cron.database_name = %L in postgresql.conf, restart, then CREATE EXTENSION pg_cron in that database.',
                                current_database());
    END IF;
    EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4, $5, true)'
       INTO jobid
      USING job_name, schedule, 'SELECT asyncjobs.cleanup()', current_database(), username;
    RETURN jobid;
END
$$;

CREATE FUNCTION asyncjobs.schedule_cleanup(schedule text DEFAULT '0 3 * * *')
RETURNS bigint LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.schedule_cleanup(text) IS
'runs asyncjobs.cleanup() on a pg_cron schedule in this database as the caller; returns the pg_cron job id';
