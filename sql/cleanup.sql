--
-- Retention: asyncjobs.cleanup() drops whole history partitions past
-- retention, deletes only the rows past their status's retention in the
-- others, never touches active jobs, and returns the exact count.
-- schedule_cleanup() without pg_cron (this instance has none).
--
-- Old completed jobs are made by inserting into asyncjobs.job_history
-- directly (as superuser), in partitions made for their day with the
-- naming of maintain_partitions().  Every time is relative to now(), and
-- only counts are shown, so the output does not depend on the date.
--

-- a partition for the UTC day of a timestamp, named as maintain_partitions() does
CREATE FUNCTION cln_part(ts timestamptz) RETURNS regclass
LANGUAGE plpgsql AS $$
DECLARE
    d date := (ts AT TIME ZONE 'UTC')::date;
    part text := 'job_history_' || to_char(d, 'YYYYMMDD');
BEGIN
    IF to_regclass('asyncjobs.' || part) IS NULL THEN
        EXECUTE format('CREATE TABLE asyncjobs.%I PARTITION OF asyncjobs.job_history
                        FOR VALUES FROM (%L) TO (%L)', part,
                       d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
    END IF;
    RETURN ('asyncjobs.' || part)::regclass;
END $$;

-- n completed jobs of a status, completed at ts, tagged (in name) for counting
CREATE FUNCTION cln_rows(tag text, status int, ts timestamptz, n int DEFAULT 1) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cln_part(ts);
    INSERT INTO asyncjobs.job_history
        (asyncoperationid, name, operationtype, messagename, statecode, statuscode,
         ownerid, createdon, modifiedon, completedon, retrycount, maxretries, data,
         priority, depth, correlationid, correlationupdatedtime, attempts)
    SELECT nextval('asyncjobs.asyncoperation_id_seq'), tag, 54, 'cln', 3, status,
           current_user::regrole, ts, ts, ts, 0, 0, '{}', 0, 1, gen_random_uuid(), ts, '[]'
      FROM generate_series(1, n);
END $$;

-- the partition holding a day (counted back from today, UTC) still exists?
CREATE FUNCTION cln_day_exists(days_ago int) RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = 'asyncjobs.job_history'::regclass
                      AND c.relname = 'job_history_' ||
                          to_char((now() AT TIME ZONE 'UTC')::date - days_ago, 'YYYYMMDD'))
$$;

CREATE FUNCTION cln_try(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE VIEW cln_left AS
SELECT name AS tag, s.statusname, count(*)
  FROM asyncjobs.job_history h JOIN asyncjobs.status s USING (statuscode)
 WHERE messagename = 'cln' GROUP BY 1, 2 ORDER BY 1, 2;

-- the settings and their defaults
SELECT name, setting, context FROM pg_settings
 WHERE name LIKE 'asyncjobs.retention%' ORDER BY name;

-- noon UTC of a day some days back
CREATE FUNCTION cln_noon(days_ago int) RETURNS timestamptz
LANGUAGE sql AS $$
    SELECT ((now() AT TIME ZONE 'UTC')::date - days_ago + time '12:00') AT TIME ZONE 'UTC'
$$;

-- a day past every retention (70 days): dropped whole
SELECT cln_rows('d70', 30, cln_noon(70), 3), cln_rows('d70', 31, cln_noon(70), 2),
       cln_rows('d70', 32, cln_noon(70), 1);
-- past the succeeded retention only, and holding only Succeeded jobs: dropped whole
SELECT cln_rows('d40', 30, cln_noon(40), 5);
-- past the succeeded retention, with Failed jobs: only the Succeeded ones go
SELECT cln_rows('d45', 30, cln_noon(45), 4), cln_rows('d45', 31, cln_noon(45), 2);
-- the same with Canceled jobs
SELECT cln_rows('d50', 30, cln_noon(50), 1), cln_rows('d50', 32, cln_noon(50), 2);
-- a minute either side of each status's retention
SELECT cln_rows('edge_s_kept', 30, now() - interval '30 days' + interval '1 minute'),
       cln_rows('edge_s_gone', 30, now() - interval '30 days' - interval '1 minute'),
       cln_rows('edge_f_kept', 31, now() - interval '60 days' + interval '1 minute'),
       cln_rows('edge_f_gone', 31, now() - interval '60 days' - interval '1 minute'),
       cln_rows('edge_c_kept', 32, now() - interval '60 days' + interval '1 minute'),
       cln_rows('edge_c_gone', 32, now() - interval '60 days' - interval '1 minute');
-- Failed and Canceled jobs younger than their retention, older than Succeeded's
SELECT cln_rows('d35', 31, cln_noon(35), 2), cln_rows('d35', 32, cln_noon(35), 1);

-- active jobs, however old, are never touched
SELECT asyncjobs.enqueue_sql('SELECT 1', name => 'cln_active', postpone_until => now() + interval '1 year') AS a1 \gset
SELECT asyncjobs.enqueue_sql('SELECT 1', name => 'cln_active', postpone_until => now() + interval '1 year') AS a2 \gset
SELECT asyncjobs.pause(:a2);
UPDATE asyncjobs.job SET createdon = now() - interval '400 days',
                         modifiedon = now() - interval '400 days'
 WHERE name = 'cln_active';

-- trace log rows: two past the 1 day retention, one not
INSERT INTO asyncjobs.plugintracelog (asyncoperationid, typename, messagename, depth,
    correlationid, messageblock, performanceexecutionstarttime, performanceexecutionduration,
    createdon)
SELECT 0, 'cln', 'cln', 1, gen_random_uuid(), 'cln line', t, 0, t
  FROM unnest(ARRAY[now() - interval '3 days', now() - interval '25 hours',
                    now() - interval '23 hours']) t;

SELECT * FROM cln_left;
SELECT d, cln_day_exists(d) FROM unnest(ARRAY[70, 50, 45, 40, 35]) d;

-- 6 (d70, dropped) + 5 (d40, dropped) + 4 (d45) + 1 (d50) + 3 (edge_*_gone)
-- + 2 trace rows
SELECT asyncjobs.cleanup() AS purged;

SELECT * FROM cln_left;
SELECT d, cln_day_exists(d) FROM unnest(ARRAY[70, 50, 45, 40, 35]) d;
SELECT statuscode, count(*) FROM asyncjobs.job WHERE name = 'cln_active'
 GROUP BY 1 ORDER BY 1;
SELECT count(*) AS trace_left FROM asyncjobs.plugintracelog WHERE typename = 'cln';

-- nothing more to do
SELECT asyncjobs.cleanup() AS purged_again;

-- per-call overrides replace a setting for one call; NULL is the setting.
-- A shorter succeeded retention takes d15's Succeeded jobs and edge_s_kept
SELECT cln_rows('d15', 30, cln_noon(15), 2), cln_rows('d15', 31, cln_noon(15), 2),
       cln_rows('d15', 32, cln_noon(15), 2);
SELECT asyncjobs.cleanup(succeeded => '10 days') AS purged_succeeded;
SELECT * FROM cln_left;
-- Failed past 14 days, Canceled past 20 days: d15's Failed jobs are deleted;
-- d35, d45 and d50, which now hold only rows past retention, are dropped
-- (d45's and d50's Succeeded jobs were deleted by the first cleanup)
SELECT asyncjobs.cleanup(NULL, '14 days', '20 days') AS purged_failed;
SELECT * FROM cln_left;
SELECT d, cln_day_exists(d) FROM unnest(ARRAY[50, 45, 35, 15]) d;
-- now only Canceled jobs are left in d15: past 14 days, it is dropped
SELECT asyncjobs.cleanup(canceled => '14 days') AS purged_canceled;
SELECT cln_day_exists(15) AS d15_exists;
SELECT * FROM cln_left;

-- today's and future partitions are never dropped, and maintain_partitions
-- does not bring back the old ones
SELECT count(*) >= 8 AS recent_partitions FROM asyncjobs._history_partitions()
 WHERE hi > now();
SELECT asyncjobs.maintain_partitions() AS created;
SELECT d, cln_day_exists(d) FROM unnest(ARRAY[70, 40, 15]) d;

-- bad input: nothing changes
SELECT cln_try($$SELECT asyncjobs.cleanup('0')$$);
SELECT cln_try($$SELECT asyncjobs.cleanup(failed => '-1 day')$$);
SELECT cln_try($$SELECT asyncjobs.cleanup(canceled => '1 day -25 hours')$$);
SELECT cln_try($$SELECT asyncjobs.cleanup(succeeded => '-1 mon 40 days')$$);
SELECT asyncjobs.cleanup(succeeded => '0 seconds');
SELECT cln_try($$SELECT asyncjobs.schedule_cleanup('')$$);
SELECT cln_try($$SELECT asyncjobs.schedule_cleanup(NULL)$$);
SELECT * FROM cln_left;

-- without pg_cron: a clear error and a hint
SELECT asyncjobs.schedule_cleanup();
SELECT cln_try($$SELECT asyncjobs.schedule_cleanup('0 4 * * *')$$);

-- who may run them: superusers and roles with the extension owner's privileges
CREATE ROLE regress_cln_user;
CREATE ROLE regress_cln_admin;
DO $$ BEGIN
    EXECUTE format('GRANT %I TO regress_cln_admin',
                   (SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'asyncjobs'));
END $$;
SET ROLE regress_cln_user;
SELECT asyncjobs.cleanup();
SELECT cln_try($$SELECT asyncjobs.schedule_cleanup()$$);
RESET ROLE;
SET ROLE regress_cln_admin;
SELECT asyncjobs.cleanup() AS purged_by_admin;
SELECT cln_try($$SELECT asyncjobs.schedule_cleanup()$$);
RESET ROLE;
-- the internal function is not for PUBLIC
SET ROLE regress_cln_user;
SELECT cln_try($$SELECT asyncjobs._cleanup_impl('regress_cln_admin', NULL, NULL, NULL)$$);
RESET ROLE;

-- tidy up for the tests after this one
SELECT asyncjobs.cancel(asyncoperationid) FROM asyncjobs.job WHERE name = 'cln_active';
DELETE FROM asyncjobs.job_history WHERE messagename = 'cln' OR name = 'cln_active';
DELETE FROM asyncjobs.plugintracelog WHERE typename = 'cln';
DO $$
DECLARE p record;
BEGIN
    FOR p IN SELECT part FROM asyncjobs._history_partitions()
              WHERE hi < ((now() AT TIME ZONE 'UTC')::date - 1)::timestamp AT TIME ZONE 'UTC'
    LOOP
        EXECUTE format('DROP TABLE %s', p.part);
    END LOOP;
END $$;
DROP VIEW cln_left;
DROP FUNCTION cln_part(timestamptz), cln_rows(text, int, timestamptz, int),
    cln_day_exists(int), cln_try(text), cln_noon(int);
DROP ROLE regress_cln_user, regress_cln_admin;
