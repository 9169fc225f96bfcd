--
-- Monitoring: duration histograms, rollups, backlog, job_stats,
-- stuck_jobs, failure_clusters and health(), each against a prepared
-- history whose answers are known.  The figures are those of one role,
-- regress_mon_user: row-level security hides every other role's jobs from
-- it, so the jobs of the other test files do not count.
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

CREATE FUNCTION pg_temp.try(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- within 5 % of the true value (the resolution of the histograms)
CREATE FUNCTION pg_temp.near(got float8, want float8) RETURNS boolean
LANGUAGE sql AS $$ SELECT abs(got - want) <= 0.05 * want $$;

--------------------------------------------------------------------------
-- Histograms
--------------------------------------------------------------------------

-- 1 ms, 2 ms, ... 100 ms
CREATE TEMP TABLE h100 AS
SELECT asyncjobs.hist_merge(asyncjobs._hist_add(NULL, g / 1000.0)) AS h
  FROM generate_series(1, 100) g;
SELECT asyncjobs._hist_count(h) AS n,
       pg_temp.near(asyncjobs._hist_quantile(h, 0.5), 0.050) AS p50,
       pg_temp.near(asyncjobs._hist_quantile(h, 0.95), 0.095) AS p95,
       pg_temp.near(asyncjobs._hist_quantile(h, 0.99), 0.099) AS p99,
       pg_temp.near(asyncjobs._hist_quantile(h, 1), 0.100) AS max,
       pg_temp.near(asyncjobs._hist_quantile(h, 0), 0.001) AS min
  FROM h100;
-- merging is adding: the same whatever the order or grouping
SELECT asyncjobs._hist_merge(a.h, b.h) = asyncjobs._hist_merge(b.h, a.h) AS commutes,
       asyncjobs._hist_count(asyncjobs._hist_merge(a.h, b.h)) AS n
  FROM h100 a, (SELECT asyncjobs._hist_add(NULL, 3600, 5) AS h) b;
-- extremes land in the first and last buckets; NULL adds nothing
SELECT asyncjobs._hist_add(NULL, 0) AS zero,
       array_length(asyncjobs._hist_add(NULL, 1e12), 1) AS huge_len,
       asyncjobs._hist_add('{1}', NULL) AS null_duration,
       asyncjobs._hist_quantile('{}', 0.5) AS empty;
SELECT pg_temp.try($$SELECT asyncjobs._hist_quantile('{1}', 1.5)$$);
SELECT pg_temp.try($$SELECT asyncjobs._hist_quantile('{1}', 'NaN')$$);
SELECT pg_temp.try($$SELECT asyncjobs._hist_count('{{1,2},{3,4}}')$$);
SELECT pg_temp.try($$SELECT asyncjobs._hist_count(array_fill(1, ARRAY[300]))$$);

--------------------------------------------------------------------------
-- Rollups and job_stats
--------------------------------------------------------------------------
CREATE ROLE regress_mon_user;
CREATE ROLE regress_mon_other;

-- mon_a: 90 succeeded (10..900 ms), 10 failed (1 s each), 5 canceled,
-- 3 retries, 1 loop detection
SELECT asyncjobs._rollup_add('mon_a', 'regress_mon_user', 30::smallint, g / 100.0)
  FROM generate_series(1, 90) g;
SELECT asyncjobs._rollup_add('mon_a', 'regress_mon_user', 31::smallint, 1.0)
  FROM generate_series(1, 9) g;
SELECT asyncjobs._rollup_add('mon_a', 'regress_mon_user', 31::smallint, 1.0, 0, true);
SELECT asyncjobs._rollup_add('mon_a', 'regress_mon_user', 32::smallint, NULL)
  FROM generate_series(1, 5) g;
SELECT asyncjobs._rollup_add('mon_a', 'regress_mon_user', NULL, NULL, 1)
  FROM generate_series(1, 3) g;
-- mon_b: 4 succeeded two hours ago (a row as compaction leaves it), and
-- 2 succeeded 100 days ago, long past the jobs' retention
INSERT INTO asyncjobs.job_rollup (bucket, operation, ownerid, shard, succeeded,
                                  duration_sum, duration_hist)
VALUES (date_trunc('hour', now() - interval '2 hours'), 'mon_b', 'regress_mon_user', -1, 4,
        8.0, asyncjobs._hist_add(NULL, 2.0, 4)),
       (date_trunc('hour', now() - interval '100 days'), 'mon_b', 'regress_mon_user', -1, 2,
        20.0, asyncjobs._hist_add(NULL, 10.0, 2));
-- another role's figures, which regress_mon_user must not see
SELECT asyncjobs._rollup_add('mon_a', 'regress_mon_other', 31::smallint, 5.0)
  FROM generate_series(1, 50) g;

SET ROLE regress_mon_user;
SELECT operation, succeeded, failed, canceled, failure_rate, retries, loops,
       pg_temp.near(p50, 0.50) AS p50_500ms,
       pg_temp.near(p95, 1.0) AS p95_1s,
       pg_temp.near(p99, 1.0) AS p99_1s,
       jobs_per_minute * 60 AS jobs_per_hour,
       pg_temp.near(mean, (4095 / 100.0 + 10) / 100) AS mean_ok
  FROM asyncjobs.job_stats('1 hour');
SELECT operation, succeeded, failed, pg_temp.near(p50, 2.0) AS p50_2s,
       round(jobs_per_minute::numeric, 4) AS jobs_per_minute
  FROM asyncjobs.job_stats('3 hours') WHERE operation = 'mon_b';
SELECT operation, succeeded, pg_temp.near(p99, 10.0) AS p99_10s
  FROM asyncjobs.job_stats('120 days') WHERE operation = 'mon_b';
RESET ROLE;
-- an admin sees both roles' figures
SELECT operation, succeeded, failed FROM asyncjobs.job_stats('1 hour')
 WHERE operation = 'mon_a';

SELECT pg_temp.try($$SELECT * FROM asyncjobs.job_stats(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM asyncjobs.job_stats('0')$$);
SELECT pg_temp.try($$SELECT * FROM asyncjobs.job_stats('-1 hour')$$);
SELECT pg_temp.try($$SELECT * FROM asyncjobs.job_stats('infinity')$$);

-- compaction into hourly rows changes no figure
CREATE TEMP TABLE before_compaction AS
SELECT * FROM asyncjobs.job_stats('200 days') WHERE operation LIKE 'mon\_%';
SELECT asyncjobs._compact_rollups(now() + interval '1 hour') > 0 AS compacted;
SELECT count(*) AS minute_rows_left FROM asyncjobs.job_rollup
 WHERE operation LIKE 'mon\_%' AND shard <> -1;
SELECT count(*) AS differing FROM (
    SELECT operation, succeeded, failed, canceled, retries, loops, p50, p95, p99,
           jobs_per_minute, round(mean::numeric, 9) FROM before_compaction
    EXCEPT
    SELECT operation, succeeded, failed, canceled, retries, loops, p50, p95, p99,
           jobs_per_minute, round(mean::numeric, 9)
      FROM asyncjobs.job_stats('200 days') WHERE operation LIKE 'mon\_%') d;

-- rollups outlive the jobs: cleanup() keeps them for
-- asyncjobs.retention_rollups (400 days), then purges them
INSERT INTO asyncjobs.job_rollup (bucket, operation, ownerid, shard, succeeded)
VALUES (now() - interval '500 days', 'mon_b', 'regress_mon_user', -1, 7);
SELECT asyncjobs.cleanup() >= 0 AS cleaned;
SELECT count(*) AS old_rollups_left FROM asyncjobs.job_rollup
 WHERE operation = 'mon_b' AND bucket < now() - interval '450 days';
SELECT succeeded AS mon_b_in_120_days FROM asyncjobs.job_stats('120 days')
 WHERE operation = 'mon_b';
SELECT last_cleanup > now() - interval '1 minute' AS cleanup_recorded,
       last_cleanup_result ? 'purged' AS with_result
  FROM asyncjobs.monitor_state;

--------------------------------------------------------------------------
-- backlog
--------------------------------------------------------------------------
SET ROLE regress_mon_user;
SELECT asyncjobs.register_operation('mon_q', max_retries => 3);
SELECT count(asyncjobs.enqueue('mon_q')) AS queued FROM generate_series(1, 3);
SELECT count(asyncjobs.enqueue('mon_q', postpone_until => now() + interval '1 hour' * g)) AS postponed
  FROM generate_series(1, 2) g;
SELECT asyncjobs.enqueue('mon_q', dependency_token => 'mon_tok') AS dep1 \gset
SELECT asyncjobs.enqueue('mon_q', dependency_token => 'mon_tok') AS dep2 \gset
SELECT asyncjobs.enqueue('mon_q') AS paused_job \gset
SELECT asyncjobs.pause(:paused_job);
-- one taken by an external worker, which fails it (transient): retrying
SELECT asyncoperationid AS c1, token AS t1 FROM asyncjobs.claim(ARRAY['mon_q'], 1) \gset
SELECT asyncjobs.fail(:c1, :'t1', 'busy', transient => true);
-- and one held
SELECT asyncoperationid AS c2, token AS t2 FROM asyncjobs.claim(ARRAY['mon_q'], 1) \gset
SELECT operation, ready, postponed, retrying, paused, waiting_dependency, in_progress,
       oldest_ready_age > interval '0' AS has_oldest,
       next_due BETWEEN now() + interval '5 seconds' AND now() + interval '1 hour' AS next_due_ok
  FROM asyncjobs.backlog WHERE operation = 'mon_q';
RESET ROLE;
-- another role sees the operation, but none of the jobs
SET ROLE regress_mon_other;
SELECT operation, ready, postponed, in_progress, oldest_ready_age
  FROM asyncjobs.backlog WHERE operation = 'mon_q';
RESET ROLE;

--------------------------------------------------------------------------
-- stuck_jobs (in a transaction the workers' requeue cannot see)
--------------------------------------------------------------------------
BEGIN;
-- the held job's lease ran out
UPDATE asyncjobs.job SET leaseexpires = now() - interval '1 second'
 WHERE asyncoperationid = :c2;
-- a job held by a worker that no longer exists
UPDATE asyncjobs.job SET statecode = 2, statuscode = 20, lockedby = 987654321,
       startedon = now() - interval '2 seconds'
 WHERE asyncoperationid = :dep1;
-- a job held by a live worker past its operation's timeout (2 minutes)
UPDATE asyncjobs.job SET statecode = 2, statuscode = 20,
       lockedby = (SELECT worker_id FROM asyncjobs.workers LIMIT 1),
       startedon = now() - interval '3 minutes'
 WHERE asyncoperationid = :paused_job;
-- a job running 30 s where the operation's p99 is 1 s (mon_a's figures)
UPDATE asyncjobs.job SET statecode = 2, statuscode = 20, messagename = 'mon_a',
       lockedby = (SELECT worker_id FROM asyncjobs.workers LIMIT 1),
       startedon = now() - interval '30 seconds'
 WHERE asyncoperationid = :dep2;
SET ROLE regress_mon_user;
SELECT asyncoperationid = :c2 AS lease, asyncoperationid = :dep1 AS gone,
       asyncoperationid = :paused_job AS timeout, asyncoperationid = :dep2 AS p99,
       operation, reason, running_for > interval '0' AS running
  FROM asyncjobs.stuck_jobs ORDER BY reason;
SET ROLE regress_mon_other;
SELECT count(*) AS other_sees FROM asyncjobs.stuck_jobs;
RESET ROLE;
ROLLBACK;

--------------------------------------------------------------------------
-- failure_clusters
--------------------------------------------------------------------------
SELECT asyncjobs.normalize_message(m) FROM unnest(ARRAY[
    'duplicate key value violates unique constraint "orders_pkey"',
    'Key (id)=(42) already exists',
    'invalid input syntax for type integer: ''abc''',
    'order 123 of customer 0x1F failed after 2.5 s',
    'job 5e1b3a4c-9d2f-4c1e-8a7b-123456789abc   lost',
    'value ''it''''s'' is not valid'
]) AS m;

-- a burst of one failure in one 5-minute bucket, and a trickle of another
INSERT INTO asyncjobs.job_history
    (asyncoperationid, name, operationtype, messagename, statuscode, ownerid,
     createdon, modifiedon, completedon, retrycount, maxretries, errorcode,
     message, friendlymessage, data, priority, depth, correlationid,
     correlationupdatedtime, attempts)
SELECT -g, 'mon', 1, CASE WHEN g % 2 = 0 THEN 'mon_pay' ELSE 'mon_ship' END, 31,
       'regress_mon_user'::regrole, t, t, t, 0, 0, '23505',
       'ERROR:  duplicate key', format('Key (id)=(%s) already exists', g), '{}'::jsonb, 0, 1,
       gen_random_uuid(), t, '[]'::jsonb
  FROM generate_series(1, 20) g,
       LATERAL (SELECT date_bin('5 minutes', now() - interval '20 minutes',
                                timestamptz '2000-01-01') + interval '1 second' * g AS t) x
UNION ALL
SELECT -100 - g, 'mon', 1, 'mon_pay', 31, 'regress_mon_user'::regrole, t, t, t, 0, 0, '57014',
       'ERROR:  canceling statement due to statement timeout',
       'canceling statement due to statement timeout', '{}'::jsonb, 0, 1, gen_random_uuid(), t, '[]'::jsonb
  FROM generate_series(1, 3) g,
       LATERAL (SELECT now() - interval '55 minutes' + interval '15 minutes' * g AS t) x;

SET ROLE regress_mon_user;
SELECT bucket = date_bin('5 minutes', now() - interval '20 minutes', timestamptz '2000-01-01') AS burst_bucket,
       errorcode, pattern, failures, last_seen - first_seen AS spread, operations
  FROM asyncjobs.failure_clusters('1 hour', '5 minutes')
 WHERE errorcode = '23505';
SELECT errorcode, pattern, count(*) AS buckets, sum(failures) AS failures
  FROM asyncjobs.failure_clusters('1 hour', '5 minutes')
 WHERE errorcode = '57014' GROUP BY 1, 2;
SELECT errorcode, sum(failures) AS failures
  FROM asyncjobs.failure_clusters('2 hours', '1 day') GROUP BY 1 ORDER BY 1;
SET ROLE regress_mon_other;
SELECT count(*) AS other_sees FROM asyncjobs.failure_clusters('1 hour', '5 minutes');
RESET ROLE;
SELECT pg_temp.try($$SELECT * FROM asyncjobs.failure_clusters(NULL, '1 hour')$$);
SELECT pg_temp.try($$SELECT * FROM asyncjobs.failure_clusters('1 hour', NULL)$$);
SELECT pg_temp.try($$SELECT * FROM asyncjobs.failure_clusters('1 hour', '0')$$);
SELECT pg_temp.try($$SELECT * FROM asyncjobs.failure_clusters('1 hour', '1 month')$$);
DELETE FROM asyncjobs.job_history WHERE asyncoperationid < 0;

--------------------------------------------------------------------------
-- health(): each check OK, WARN or CRIT against its thresholds
--------------------------------------------------------------------------
CREATE FUNCTION pg_temp.health() RETURNS TABLE (check_name text, status text, value numeric)
LANGUAGE sql AS $$
    SELECT check_name, status, round(value::numeric, 3) FROM asyncjobs.health()
     WHERE check_name IN ('failures_24h', 'backlog_depth', 'stuck_jobs',
                          'retry_storms', 'loop_detections', 'workers_alive')
$$;
SET ROLE regress_mon_user;
-- mon_a and mon_b: 10 of 104 failed, one loop; backlog: 2 ready
SELECT * FROM pg_temp.health();
SET asyncjobs.health_failure_rate_crit = 0.09;
SET asyncjobs.health_backlog_warn = 2;
SELECT check_name, status FROM pg_temp.health()
 WHERE check_name IN ('failures_24h', 'backlog_depth');
SET asyncjobs.health_failure_rate_warn = 0.2;
SET asyncjobs.health_failure_rate_crit = 0.3;
SET asyncjobs.health_backlog_warn = 1;
SET asyncjobs.health_backlog_crit = 2;
SELECT check_name, status FROM pg_temp.health()
 WHERE check_name IN ('failures_24h', 'backlog_depth');
RESET asyncjobs.health_failure_rate_warn;
RESET asyncjobs.health_failure_rate_crit;
RESET asyncjobs.health_backlog_warn;
RESET asyncjobs.health_backlog_crit;
-- a retry storm: 10 failed attempts within the hour, no success
RESET ROLE;
SELECT asyncjobs._rollup_add('mon_storm', 'regress_mon_user', NULL, NULL, 1)
  FROM generate_series(1, 9);
SELECT asyncjobs._rollup_add('mon_storm', 'regress_mon_user', 31::smallint, 0.1);
SET ROLE regress_mon_user;
SELECT status, detail FROM asyncjobs.health() WHERE check_name = 'retry_storms';
SET asyncjobs.health_retry_storm_attempts = 11;
SELECT status FROM asyncjobs.health() WHERE check_name = 'retry_storms';
RESET asyncjobs.health_retry_storm_attempts;
-- stuck jobs, seen in a transaction
RESET ROLE;
BEGIN;
UPDATE asyncjobs.job SET statecode = 2, statuscode = 20, lockedby = 987654321,
       startedon = now()
 WHERE messagename = 'mon_q' AND statuscode = 0;
SET ROLE regress_mon_user;
SELECT status, value, detail FROM asyncjobs.health() WHERE check_name = 'stuck_jobs';
SET asyncjobs.health_stuck_crit = 2;
SELECT status FROM asyncjobs.health() WHERE check_name = 'stuck_jobs';
ROLLBACK;
-- every check has a threshold, a detail, and an action when not OK
SELECT count(*) AS checks,
       count(*) FILTER (WHERE threshold IS NULL OR detail IS NULL) AS incomplete,
       count(*) FILTER (WHERE status <> 'OK' AND action IS NULL) AS without_action
  FROM asyncjobs.health();
SELECT pg_temp.try($$SET asyncjobs.health_failure_rate_warn = 2$$);
SELECT pg_temp.try($$SET asyncjobs.health_backlog_warn = 0$$);

-- clean up
RESET ROLE;
SELECT asyncjobs.cancel(asyncoperationid) FROM asyncjobs.job WHERE messagename = 'mon_q';
DELETE FROM asyncjobs.operation_type WHERE name = 'mon_q';
DELETE FROM asyncjobs.job_rollup WHERE operation LIKE 'mon\_%' OR ownerid::text LIKE 'regress_mon%';
DELETE FROM asyncjobs.backlog_sample WHERE ownerid::text LIKE 'regress_mon%';
DELETE FROM asyncjobs.job_history WHERE messagename = 'mon_q';
DROP ROLE regress_mon_user, regress_mon_other;
