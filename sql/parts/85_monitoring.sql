
/* sql/parts/85_monitoring.sql: rollups, backlog, job_stats, stuck_jobs, failure_clusters, health */

--------------------------------------------------------------------------
-- Duration histograms (src/monitor.c)
--------------------------------------------------------------------------

CREATE FUNCTION asyncjobs._hist_add(hist int4[], seconds float8, n int4 DEFAULT 1)
RETURNS int4[] LANGUAGE C IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'asyncjobs_hist_add';

CREATE FUNCTION asyncjobs._hist_merge(a int4[], b int4[])
RETURNS int4[] LANGUAGE C IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'asyncjobs_hist_merge';

CREATE FUNCTION asyncjobs._hist_quantile(hist int4[], q float8)
RETURNS float8 LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'asyncjobs_hist_quantile';

CREATE FUNCTION asyncjobs._hist_count(hist int4[])
RETURNS bigint LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'asyncjobs_hist_count';

CREATE FUNCTION asyncjobs._hist_accum(state internal, hist int4[])
RETURNS internal LANGUAGE C CALLED ON NULL INPUT
AS 'MODULE_PATHNAME', 'asyncjobs_hist_accum';

CREATE FUNCTION asyncjobs._hist_final(state internal)
RETURNS int4[] LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_hist_final';

-- The sum of duration histograms (the running sum kept in memory).
CREATE AGGREGATE asyncjobs.hist_merge(int4[]) (
    SFUNC = asyncjobs._hist_accum,
    STYPE = internal,
    FINALFUNC = asyncjobs._hist_final
);

--------------------------------------------------------------------------
-- Rollups: what completed, per minute (the last day) or hour (before),
-- operation and owner.  They are written in the transaction that
-- completes the job, so they count every job exactly once, and they
-- outlive cleanup(): job_stats() over a month still answers.
--------------------------------------------------------------------------

CREATE TABLE asyncjobs.job_rollup (
    bucket          timestamptz NOT NULL,
    operation       text        NOT NULL,
    ownerid         regrole     NOT NULL,
    -- writers spread over shards so that two workers completing jobs of
    -- the same operation rarely wait for each other's row; -1 marks a
    -- compacted hourly row
    shard           smallint    NOT NULL,
    succeeded       bigint      NOT NULL DEFAULT 0,
    failed          bigint      NOT NULL DEFAULT 0,
    canceled        bigint      NOT NULL DEFAULT 0,
    retries         bigint      NOT NULL DEFAULT 0,
    loops           bigint      NOT NULL DEFAULT 0,
    duration_sum    double precision NOT NULL DEFAULT 0,
    duration_hist   int4[],
    PRIMARY KEY (bucket, operation, ownerid, shard)
) WITH (fillfactor = 50);

-- job_stats() and stuck_jobs read one operation's recent rows
CREATE INDEX job_rollup_operation_idx ON asyncjobs.job_rollup (operation, bucket);

COMMENT ON TABLE asyncjobs.job_rollup IS
'jobs completed and retried per minute (hour after a day), operation and owner, with a duration histogram';

-- Adds counts to the rollup row of this minute, operation and owner (the
-- shard of this backend).
CREATE FUNCTION asyncjobs._rollup_write(op text, owner regrole,
                                        n_succeeded bigint, n_failed bigint,
                                        n_canceled bigint, n_retries bigint,
                                        n_loops bigint, dsum double precision,
                                        hist int4[])
RETURNS void
-- PL/pgSQL, not SQL: a SQL function with a SET clause is parsed and
-- planned at every call, and the workers call this once per batch
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO asyncjobs.job_rollup AS r
        (bucket, operation, ownerid, shard, succeeded, failed, canceled,
         retries, loops, duration_sum, duration_hist)
    VALUES (date_trunc('minute', now()), op, owner,
            (pg_backend_pid() % 8)::smallint,
            n_succeeded, n_failed, n_canceled, n_retries, n_loops, dsum, hist)
    ON CONFLICT (bucket, operation, ownerid, shard) DO UPDATE
       SET succeeded = r.succeeded + excluded.succeeded,
           failed = r.failed + excluded.failed,
           canceled = r.canceled + excluded.canceled,
           retries = r.retries + excluded.retries,
           loops = r.loops + excluded.loops,
           duration_sum = r.duration_sum + excluded.duration_sum,
           duration_hist = CASE WHEN excluded.duration_hist IS NULL THEN r.duration_hist
                                ELSE asyncjobs._hist_merge(r.duration_hist, excluded.duration_hist) END;
END
$$;

-- Counts one event of a job: its completion (status 30, 31, 32, with its
-- run time) or a retry.  In a session it writes the rollup at once; in a
-- worker's batch it is added up in memory, per subtransaction (a job whose
-- subtransaction rolls back counts nothing), and written once per
-- operation and owner just before the batch commits (src/monitor.c).
CREATE FUNCTION asyncjobs._rollup_add(op text, owner regrole, status smallint,
                                      timespan double precision,
                                      retried int DEFAULT 0,
                                      loop boolean DEFAULT false)
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_rollup_add';

-- Backlog samples, one per minute per operation and owner (kept hourly
-- after two days), for the trend of backlog depth.
CREATE TABLE asyncjobs.backlog_sample (
    sampled_at      timestamptz NOT NULL,
    operation       text        NOT NULL,
    ownerid         regrole     NOT NULL,
    ready           bigint      NOT NULL,
    suspended       bigint      NOT NULL,
    in_progress     bigint      NOT NULL,
    oldest_ready_age interval,
    PRIMARY KEY (sampled_at, operation, ownerid)
);

COMMENT ON TABLE asyncjobs.backlog_sample IS
'backlog depth per minute (hour after two days), operation and owner';

-- When the monitoring housekeeping last ran (one row).
CREATE TABLE asyncjobs.monitor_state (
    id              boolean     PRIMARY KEY DEFAULT true CHECK (id),
    last_sample     timestamptz,
    last_compaction timestamptz,
    last_cleanup    timestamptz,
    last_cleanup_result jsonb
);
INSERT INTO asyncjobs.monitor_state DEFAULT VALUES;

-- The monitoring housekeeping, called by the workers every 10 seconds:
-- a backlog sample once a minute, and once an hour the compaction of
-- minute rollups older than a day into hourly rows, and of minute
-- samples older than two days into hourly ones.  One worker at a time.
CREATE FUNCTION asyncjobs._monitor_tick()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- run by the workers: not worth loading the JIT compiler into each
SET jit = off
AS $$
DECLARE
    st     asyncjobs.monitor_state%ROWTYPE;
    minute timestamptz := date_trunc('minute', now());
BEGIN
    IF NOT pg_try_advisory_xact_lock(1634364018, 3) THEN
        RETURN;
    END IF;
    SELECT * INTO st FROM asyncjobs.monitor_state;
    IF st.last_sample IS NULL OR st.last_sample < minute THEN
        INSERT INTO asyncjobs.backlog_sample
            (sampled_at, operation, ownerid, ready, suspended, in_progress,
             oldest_ready_age)
        SELECT minute, j.messagename, j.ownerid,
               count(*) FILTER (WHERE j.statecode = 0
                                   OR (j.statuscode IN (10, 11) AND j.runafter <= now())),
               count(*) FILTER (WHERE j.statecode = 1
                                  AND NOT (j.statuscode IN (10, 11) AND j.runafter <= now())),
               count(*) FILTER (WHERE j.statecode = 2),
               now() - min(j.runafter) FILTER (WHERE j.statecode = 0
                                   OR (j.statuscode IN (10, 11) AND j.runafter <= now()))
          FROM asyncjobs.job j
         GROUP BY j.messagename, j.ownerid
        ON CONFLICT DO NOTHING;
        UPDATE asyncjobs.monitor_state SET last_sample = minute;
    END IF;
    IF st.last_compaction IS NULL OR st.last_compaction < now() - interval '1 hour' THEN
        PERFORM asyncjobs._compact_rollups(now() - interval '1 day');
        DELETE FROM asyncjobs.backlog_sample
         WHERE sampled_at < now() - interval '2 days'
           AND sampled_at <> date_trunc('hour', sampled_at, 'UTC');
        UPDATE asyncjobs.monitor_state SET last_compaction = now();
    END IF;
END
$$;

-- Folds the minute rows of rollups older than "before" into one row per
-- UTC hour, operation and owner (shard -1).  Returns the rows folded.
CREATE FUNCTION asyncjobs._compact_rollups(before timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- run by the workers: not worth loading the JIT compiler into each
SET jit = off
AS $$
DECLARE
    n bigint;
BEGIN
    WITH old AS (
        DELETE FROM asyncjobs.job_rollup
         WHERE bucket < date_trunc('hour', before, 'UTC')
           AND (shard <> -1 OR bucket <> date_trunc('hour', bucket, 'UTC'))
        RETURNING *),
    folded AS (
        INSERT INTO asyncjobs.job_rollup AS r
            (bucket, operation, ownerid, shard, succeeded, failed, canceled,
             retries, loops, duration_sum, duration_hist)
        SELECT date_trunc('hour', o.bucket, 'UTC'), o.operation, o.ownerid, -1,
               sum(o.succeeded), sum(o.failed), sum(o.canceled), sum(o.retries),
               sum(o.loops), sum(o.duration_sum), asyncjobs.hist_merge(o.duration_hist)
          FROM old o
         GROUP BY 1, 2, 3
        ON CONFLICT (bucket, operation, ownerid, shard) DO UPDATE
           SET succeeded = r.succeeded + excluded.succeeded,
               failed = r.failed + excluded.failed,
               canceled = r.canceled + excluded.canceled,
               retries = r.retries + excluded.retries,
               loops = r.loops + excluded.loops,
               duration_sum = r.duration_sum + excluded.duration_sum,
               duration_hist = asyncjobs._hist_merge(r.duration_hist, excluded.duration_hist)
        RETURNING 1)
    SELECT count(*) INTO n FROM old;
    RETURN n;
END
$$;

--------------------------------------------------------------------------
-- backlog: the active jobs per operation, by why they wait
--------------------------------------------------------------------------

CREATE VIEW asyncjobs.backlog AS
WITH a AS (
    SELECT j.messagename, j.statecode, j.statuscode, j.runafter,
           j.statuscode IN (0, 10, 11) AND j.runafter <= now()
               AND j.dependencytoken IS NOT NULL
               AND EXISTS (SELECT 1 FROM asyncjobs.job d
                            WHERE d.dependencytoken = j.dependencytoken
                              AND d.asyncoperationid < j.asyncoperationid) AS behind
      FROM asyncjobs.job j)
SELECT o.operation,
       count(*) FILTER (WHERE a.statuscode IN (0, 10, 11) AND a.runafter <= now()
                          AND NOT a.behind) AS ready,
       count(*) FILTER (WHERE a.statuscode = 10 AND a.runafter > now()) AS postponed,
       count(*) FILTER (WHERE a.statuscode = 11 AND a.runafter > now()) AS retrying,
       count(*) FILTER (WHERE a.statuscode = 12) AS paused,
       count(*) FILTER (WHERE a.behind) AS waiting_dependency,
       count(*) FILTER (WHERE a.statecode = 2) AS in_progress,
       now() - min(a.runafter) FILTER (WHERE a.statuscode IN (0, 10, 11)
                                       AND a.runafter <= now() AND NOT a.behind)
           AS oldest_ready_age,
       min(a.runafter) FILTER (WHERE a.statuscode IN (10, 11) AND a.runafter > now())
           AS next_due
  FROM (SELECT name AS operation FROM asyncjobs.operation_type
        UNION
        SELECT DISTINCT messagename FROM asyncjobs.job) o
  LEFT JOIN a ON a.messagename = o.operation
 GROUP BY o.operation;

COMMENT ON VIEW asyncjobs.backlog IS
'per operation: jobs ready, postponed, retrying, paused, waiting on a dependency, in progress; age of the oldest ready job; next due';

--------------------------------------------------------------------------
-- job_stats: outcomes, retries and run-time percentiles from the rollups
--------------------------------------------------------------------------

CREATE FUNCTION asyncjobs.job_stats(since interval DEFAULT '1 hour')
RETURNS TABLE (operation text, succeeded bigint, failed bigint, canceled bigint,
               failure_rate double precision, retries bigint,
               p50 double precision, p95 double precision, p99 double precision,
               jobs_per_minute double precision, mean double precision,
               loops bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF since IS NULL OR since <= interval '0' OR isfinite(since) IS NOT TRUE THEN
        RAISE EXCEPTION 'since must be a positive interval, not %', coalesce(since::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example asyncjobs.job_stats(''1 hour'') or asyncjobs.job_stats(''30 days'').';
    END IF;
    RETURN QUERY
    SELECT g.operation, g.succeeded, g.failed, g.canceled,
           CASE WHEN g.succeeded + g.failed > 0
                THEN g.failed::float8 / (g.succeeded + g.failed) END,
           g.retries,
           asyncjobs._hist_quantile(g.hist, 0.50),
           asyncjobs._hist_quantile(g.hist, 0.95),
           asyncjobs._hist_quantile(g.hist, 0.99),
           (g.succeeded + g.failed + g.canceled)::float8
               / greatest(extract(epoch FROM since)::float8 / 60, 1.0 / 60),
           CASE WHEN g.succeeded + g.failed > 0
                THEN g.duration_sum / (g.succeeded + g.failed) END,
           g.loops
      FROM (SELECT r.operation,
                   sum(r.succeeded)::bigint AS succeeded,
                   sum(r.failed)::bigint AS failed,
                   sum(r.canceled)::bigint AS canceled,
                   sum(r.retries)::bigint AS retries,
                   sum(r.loops)::bigint AS loops,
                   sum(r.duration_sum) AS duration_sum,
                   asyncjobs.hist_merge(r.duration_hist) AS hist
              FROM asyncjobs.job_rollup r
             WHERE r.bucket >= now() - since
             GROUP BY r.operation) g
     ORDER BY g.operation;
END
$$;

COMMENT ON FUNCTION asyncjobs.job_stats(interval) IS
'per operation over the last "since": outcomes, failure rate, retries, run-time percentiles (seconds, within 5 %), jobs per minute';

--------------------------------------------------------------------------
-- stuck_jobs
--------------------------------------------------------------------------

CREATE VIEW asyncjobs.stuck_jobs AS
WITH locked AS (
    SELECT j.* FROM asyncjobs.job j WHERE j.statecode = 2),
-- the p99 of each operation that has jobs in progress, once per operation
p AS (
    SELECT r.operation,
           asyncjobs._hist_quantile(asyncjobs.hist_merge(r.duration_hist), 0.99) AS p99
      FROM asyncjobs.job_rollup r
     WHERE r.bucket >= now() - interval '1 day'
       AND r.operation IN (SELECT l.messagename FROM locked l)
     GROUP BY r.operation)
SELECT s.asyncoperationid, s.operation, s.ownerid, s.startedon, s.running_for,
       s.reason, s.hostid
  FROM (SELECT j.asyncoperationid, j.messagename AS operation, j.ownerid,
               j.startedon, now() - j.startedon AS running_for, j.hostid,
               CASE
                 WHEN j.leasetoken IS NOT NULL AND j.leaseexpires < now()
                   THEN 'lease expired'
                 WHEN j.lockedby IS NOT NULL AND NOT asyncjobs._live_worker(j.lockedby)
                   THEN 'worker gone'
                 WHEN j.leasetoken IS NULL AND j.startedon < now() - t.timeout
                   THEN 'past timeout'
                 WHEN now() - j.startedon > greatest(interval '10 seconds',
                        make_interval(secs => 5 * p.p99))
                   THEN 'beyond p99'
               END AS reason
          FROM locked j
          LEFT JOIN asyncjobs.operation_type t ON t.name = j.messagename
          LEFT JOIN p ON p.operation = j.messagename) s
 WHERE s.reason IS NOT NULL;

COMMENT ON VIEW asyncjobs.stuck_jobs IS
'Locked jobs past their timeout or lease, held by a worker that no longer exists, or running over 5 times their operation''s p99';

--------------------------------------------------------------------------
-- failure_clusters
--------------------------------------------------------------------------

-- An error message with the values folded out: quoted strings, UUIDs,
-- hexadecimal and decimal numbers, so that messages about different rows
-- or ids fall together.
CREATE FUNCTION asyncjobs.normalize_message(message text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT btrim(regexp_replace(
             regexp_replace(
               regexp_replace(
                 regexp_replace(
                   regexp_replace(
                     regexp_replace(message, '''(''''|[^''])*''', '''?''', 'g'),
                     '"([^"])*"', '"?"', 'g'),
                   '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '?', 'g'),
                 '\m0x[0-9a-fA-F]+\M', 'N', 'g'),
               '[-+]?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?', 'N', 'g'),
             '\s+', ' ', 'g'))
$$;

CREATE FUNCTION asyncjobs._failure_clusters(since interval, width interval)
RETURNS TABLE (bucket timestamptz, errorcode text, pattern text, failures bigint,
               first_seen timestamptz, last_seen timestamptz, operations text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF since IS NULL OR since <= interval '0' OR isfinite(since) IS NOT TRUE THEN
        RAISE EXCEPTION 'since must be a positive interval, not %', coalesce(since::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF width IS NULL OR width <= interval '0' OR isfinite(width) IS NOT TRUE
       OR extract(month FROM width) <> 0 OR extract(year FROM width) <> 0 THEN
        RAISE EXCEPTION 'bucket must be a positive interval of days or less, not %',
                        coalesce(width::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example ''5 minutes'', ''1 hour'' or ''1 day''.';
    END IF;
    RETURN QUERY
    SELECT date_bin(width, h.completedon, timestamptz '2000-01-01 00:00:00+00'),
           h.errorcode,
           asyncjobs.normalize_message(coalesce(h.friendlymessage, h.message, '')),
           count(*),
           min(h.completedon), max(h.completedon),
           array_agg(DISTINCT h.messagename ORDER BY h.messagename)
      FROM asyncjobs.job_history h
     WHERE h.statuscode = 31 AND h.completedon >= now() - since
     GROUP BY 1, 2, 3
     ORDER BY 1, 4 DESC, 2, 3;
END
$$;

-- (LANGUAGE sql: its parameter "bucket" and its column "bucket" may share
-- a name, which PL/pgSQL does not allow)
CREATE FUNCTION asyncjobs.failure_clusters(since interval DEFAULT '24 hours',
                                           bucket interval DEFAULT '1 hour')
RETURNS TABLE (bucket timestamptz, errorcode text, pattern text, failures bigint,
               first_seen timestamptz, last_seen timestamptz, operations text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM asyncjobs._failure_clusters(since, bucket)
$$;

COMMENT ON FUNCTION asyncjobs.failure_clusters(interval, interval) IS
'jobs that ended Failed, grouped by time bucket, SQLSTATE and message with values folded out';

--------------------------------------------------------------------------
-- health(): the operational rhythm as checks
--------------------------------------------------------------------------

-- The pg_cron schedule of this database's cleanup, if pg_cron is here.
-- SECURITY DEFINER: cron.job shows each role only its own jobs, and the
-- cleanup is usually scheduled by another role.  It returns nothing but
-- the schedule of that one job.
CREATE FUNCTION asyncjobs._cleanup_schedule()
RETURNS text
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s text;
BEGIN
    IF to_regclass('cron.job') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT schedule FROM cron.job WHERE jobname = $1 AND active LIMIT 1'
       INTO s USING 'asyncjobs-cleanup-' || current_database();
    RETURN s;
END
$$;

-- The live workers of this database.
CREATE FUNCTION asyncjobs._database_workers()
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM asyncjobs._workers() w
     WHERE w.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND w.state IN ('idle', 'claiming', 'running')
$$;

-- OK, WARN or CRIT for a value against two thresholds (higher is worse).
CREATE FUNCTION asyncjobs._grade(value double precision, warn double precision,
                                 crit double precision)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN value >= crit THEN 'CRIT' WHEN value >= warn THEN 'WARN' ELSE 'OK' END
$$;

CREATE FUNCTION asyncjobs.health()
RETURNS TABLE (check_name text, status text, value double precision,
               threshold text, detail text, action text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w_rate  float8 := current_setting('asyncjobs.health_failure_rate_warn')::float8;
    c_rate  float8 := current_setting('asyncjobs.health_failure_rate_crit')::float8;
    w_back  bigint := current_setting('asyncjobs.health_backlog_warn')::bigint;
    c_back  bigint := current_setting('asyncjobs.health_backlog_crit')::bigint;
    w_age   float8 := extract(epoch FROM current_setting('asyncjobs.health_oldest_ready_warn')::interval);
    c_age   float8 := extract(epoch FROM current_setting('asyncjobs.health_oldest_ready_crit')::interval);
    w_stuck bigint := current_setting('asyncjobs.health_stuck_warn')::bigint;
    c_stuck bigint := current_setting('asyncjobs.health_stuck_crit')::bigint;
    storm_n bigint := current_setting('asyncjobs.health_retry_storm_attempts')::bigint;
    w_dead  bigint := current_setting('asyncjobs.health_dead_tuples_warn')::bigint;
    c_dead  bigint := current_setting('asyncjobs.health_dead_tuples_crit')::bigint;
    max_cln interval := current_setting('asyncjobs.health_cleanup_max_age')::interval;
    ok_n    bigint;
    bad_n   bigint;
    n       bigint;
    age     float8;
    txt     text;
    ts      timestamptz;
    want    int;
BEGIN
    -- failures in the last 24 hours
    SELECT coalesce(sum(r.succeeded), 0), coalesce(sum(r.failed), 0)
      INTO ok_n, bad_n
      FROM asyncjobs.job_rollup r WHERE r.bucket >= now() - interval '24 hours';
    check_name := 'failures_24h';
    value := CASE WHEN ok_n + bad_n > 0 THEN bad_n::float8 / (ok_n + bad_n) ELSE 0 END;
    status := asyncjobs._grade(value, w_rate, c_rate);
    threshold := format('WARN >= %s, CRIT >= %s', w_rate, c_rate);
    detail := format('%s of %s completed jobs failed in the last 24 hours', bad_n, ok_n + bad_n);
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT * FROM asyncjobs.failure_clusters(''24 hours'', ''1 hour''); a burst in one bucket points to a system issue' END;
    RETURN NEXT;

    -- backlog depth and age
    SELECT coalesce(sum(b.ready), 0), extract(epoch FROM max(b.oldest_ready_age))
      INTO n, age FROM asyncjobs.backlog b;
    check_name := 'backlog_depth';
    value := n;
    status := asyncjobs._grade(n, w_back, c_back);
    threshold := format('WARN >= %s, CRIT >= %s', w_back, c_back);
    detail := format('%s jobs ready to run', n);
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT * FROM asyncjobs.backlog ORDER BY ready DESC; raise asyncjobs.max_workers, or find what slows the jobs (asyncjobs.job_stats())' END;
    RETURN NEXT;

    check_name := 'backlog_oldest_age';
    value := coalesce(age, 0);
    status := asyncjobs._grade(value, w_age, c_age);
    threshold := format('WARN >= %s s, CRIT >= %s s', w_age, c_age);
    detail := CASE WHEN age IS NULL THEN 'no job is waiting'
                   ELSE format('the oldest ready job has waited %s s', round(age::numeric, 1)) END;
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT * FROM asyncjobs.backlog; check asyncjobs.workers and asyncjobs.enabled' END;
    RETURN NEXT;

    -- stuck jobs
    SELECT count(*) INTO n FROM asyncjobs.stuck_jobs;
    check_name := 'stuck_jobs';
    value := n;
    status := asyncjobs._grade(n, w_stuck, c_stuck);
    threshold := format('WARN >= %s, CRIT >= %s', w_stuck, c_stuck);
    detail := format('%s jobs stuck', n);
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT * FROM asyncjobs.stuck_jobs; jobs of a dead worker are requeued within 10 s, others may need asyncjobs.cancel()' END;
    RETURN NEXT;

    -- retry storms: operations with many attempts in the last hour, none successful
    SELECT count(*), string_agg(s.operation, ', ' ORDER BY s.operation)
      INTO n, txt
      FROM (SELECT r.operation
              FROM asyncjobs.job_rollup r
             WHERE r.bucket >= now() - interval '1 hour'
             GROUP BY r.operation
            HAVING sum(r.succeeded) = 0 AND sum(r.retries + r.failed) >= storm_n) s;
    check_name := 'retry_storms';
    value := n;
    status := CASE WHEN n > 0 THEN 'CRIT' ELSE 'OK' END;
    threshold := format('CRIT when an operation had >= %s failed attempts and no success in an hour', storm_n);
    detail := CASE WHEN n = 0 THEN 'no operation fails on every attempt'
                   ELSE format('failing on every attempt: %s', txt) END;
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT asyncjobs.pause_operation(name) while the cause is fixed; asyncjobs.failure_clusters() shows the errors' END;
    RETURN NEXT;

    -- infinite-loop detections in the last 24 hours
    SELECT coalesce(sum(r.loops), 0) INTO n
      FROM asyncjobs.job_rollup r WHERE r.bucket >= now() - interval '24 hours';
    check_name := 'loop_detections';
    value := n;
    status := CASE WHEN n > 0 THEN 'WARN' ELSE 'OK' END;
    threshold := 'WARN >= 1';
    detail := format('%s jobs failed with AJ002 (infinite loop) in the last 24 hours', n);
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT * FROM asyncjobs.asyncoperation WHERE errorcode = ''AJ002''; break the cycle of jobs enqueuing jobs' END;
    RETURN NEXT;

    -- cleanup: scheduled, and run lately
    txt := asyncjobs._cleanup_schedule();
    check_name := 'cleanup_scheduled';
    value := (txt IS NOT NULL)::int;
    status := CASE WHEN txt IS NOT NULL THEN 'OK' ELSE 'WARN' END;
    threshold := 'WARN when no pg_cron job runs asyncjobs.cleanup() in this database';
    detail := CASE WHEN txt IS NOT NULL THEN format('pg_cron runs the cleanup at "%s"', txt)
                   WHEN to_regclass('cron.job') IS NULL THEN 'pg_cron is not installed in this database'
                   ELSE 'no pg_cron job runs the cleanup of this database' END;
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT asyncjobs.schedule_cleanup(''0 3 * * *''); (or run asyncjobs.cleanup() daily from another scheduler)' END;
    RETURN NEXT;

    SELECT m.last_cleanup INTO ts FROM asyncjobs.monitor_state m;
    check_name := 'cleanup_last_run';
    value := extract(epoch FROM now() - ts);
    status := CASE WHEN ts IS NULL OR now() - ts > max_cln THEN 'WARN' ELSE 'OK' END;
    threshold := format('WARN when older than %s', max_cln);
    detail := CASE WHEN ts IS NULL THEN 'asyncjobs.cleanup() never ran'
                   ELSE format('asyncjobs.cleanup() last ran at %s', ts) END;
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT asyncjobs.cleanup(); and schedule it (asyncjobs.schedule_cleanup())' END;
    RETURN NEXT;

    -- the active job table: size and dead rows
    SELECT coalesce(s.n_dead_tup, 0), pg_total_relation_size('asyncjobs.job'::regclass)
      INTO n, ok_n
      FROM (SELECT 1) one
      LEFT JOIN pg_stat_user_tables s ON s.relid = 'asyncjobs.job'::regclass;
    check_name := 'job_table_bloat';
    value := n;
    status := asyncjobs._grade(n, w_dead, c_dead);
    threshold := format('WARN >= %s dead rows, CRIT >= %s', w_dead, c_dead);
    detail := format('asyncjobs.job: %s, %s dead rows', pg_size_pretty(ok_n), n);
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'VACUUM asyncjobs.job; look for a long transaction holding back the xmin horizon (pg_stat_activity.backend_xmin)' END;
    RETURN NEXT;

    -- workers alive
    n := asyncjobs._database_workers();
    want := current_setting('asyncjobs.max_workers')::int;
    check_name := 'workers_alive';
    value := n;
    status := CASE WHEN NOT current_setting('asyncjobs.enabled')::boolean THEN 'WARN'
                   WHEN want > 0 AND n = 0 THEN 'CRIT'
                   WHEN n < want THEN 'WARN' ELSE 'OK' END;
    threshold := format('CRIT with none of %s, WARN with fewer', want);
    detail := CASE WHEN NOT current_setting('asyncjobs.enabled')::boolean
                   THEN format('%s of %s workers, but asyncjobs.enabled is off: no job starts', n, want)
                   ELSE format('%s of %s workers of this database are up', n, want) END;
    action := CASE WHEN status = 'OK' THEN NULL ELSE
              'SELECT * FROM asyncjobs.workers; the server log says why workers exit (max_worker_processes?)' END;
    RETURN NEXT;
END
$$;

COMMENT ON FUNCTION asyncjobs.health() IS
'the operational checks, each OK, WARN or CRIT with its value, threshold and what to do';

--------------------------------------------------------------------------
-- Who sees which figures: the owner's rows, as for the jobs
--------------------------------------------------------------------------

ALTER TABLE asyncjobs.job_rollup ENABLE ROW LEVEL SECURITY;
CREATE POLICY job_rollup_owner ON asyncjobs.job_rollup FOR SELECT
    USING ((SELECT asyncjobs._visible_owners()) IS NULL
           OR ownerid::oid = ANY (coalesce((SELECT asyncjobs._visible_owners()), '{}')));

ALTER TABLE asyncjobs.backlog_sample ENABLE ROW LEVEL SECURITY;
CREATE POLICY backlog_sample_owner ON asyncjobs.backlog_sample FOR SELECT
    USING ((SELECT asyncjobs._visible_owners()) IS NULL
           OR ownerid::oid = ANY (coalesce((SELECT asyncjobs._visible_owners()), '{}')));

ALTER VIEW asyncjobs.backlog SET (security_invoker = true);
ALTER VIEW asyncjobs.stuck_jobs SET (security_invoker = true);
