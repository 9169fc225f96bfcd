--
-- Reports: the dashboard view, report_html() and metrics(), each against a
-- prepared history whose answers are known.  The history and the reports
-- run in one transaction, rolled back at the end: now() is the same for
-- both (so "this minute" and "last minute" are too), and the workers never
-- see the rows.  The figures are those of regress_rep_user: row-level
-- security hides every other role's jobs from it, so what the other test
-- files leave behind does not count.
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

-- the lines of metrics(), numbered
CREATE FUNCTION pg_temp.metric_lines() RETURNS TABLE (n bigint, line text)
LANGUAGE sql AS $$
    SELECT t.n, t.line
      FROM regexp_split_to_table(asyncjobs.metrics(), E'\n') WITH ORDINALITY t(line, n)
$$;

-- the values of an attribute of the elements a pattern matches in a page
CREATE FUNCTION pg_temp.attr_values(page text, pattern text) RETURNS SETOF text
LANGUAGE sql AS $$
    SELECT m[1] FROM regexp_matches(page, pattern, 'g') m
$$;

-- the bars of a horizontal bar chart of a page: label, value, value shown
CREATE FUNCTION pg_temp.hbars(page text, chart text)
RETURNS TABLE (operation text, value text, shown text)
LANGUAGE sql AS $$
    SELECT (regexp_match(s.p, '^<title>([^<]*)</title>'))[1],
           (regexp_match(s.p, 'data-value="([^"]*)"'))[1],
           (regexp_match(s.p, '<text class="value"[^>]*>([^<]*)</text>'))[1]
      FROM regexp_split_to_table(substring(page FROM format('id="chart-%s".*?</svg>', chart)),
                                 '<text class="label"[^>]*>') WITH ORDINALITY s(p, n)
     WHERE s.n > 1
     ORDER BY s.n
$$;

CREATE ROLE regress_rep_user;
CREATE ROLE regress_rep_other;
CREATE ROLE regress_rep_admin IN ROLE asyncjobs_admin;

BEGIN;

--------------------------------------------------------------------------
-- The history
--------------------------------------------------------------------------

-- this minute: rep_alpha 8 succeeded (125 ms), 2 failed (500 ms),
-- 1 canceled, 3 retries; a hostile name 1 failed; a name with a quote, a
-- backslash and a newline 1 succeeded
SELECT count(*) AS added
  FROM (SELECT asyncjobs._rollup_add('rep_alpha', 'regress_rep_user', 30::smallint, 0.125)
          FROM generate_series(1, 8)) s;
SELECT count(*) AS added
  FROM (SELECT asyncjobs._rollup_add('rep_alpha', 'regress_rep_user', 31::smallint, 0.5)
          FROM generate_series(1, 2)) s;
SELECT asyncjobs._rollup_add('rep_alpha', 'regress_rep_user', 32::smallint, NULL);
SELECT count(*) AS added
  FROM (SELECT asyncjobs._rollup_add('rep_alpha', 'regress_rep_user', NULL, NULL, 1)
          FROM generate_series(1, 3)) s;
SELECT asyncjobs._rollup_add('rep_<script>alert(1)</script>', 'regress_rep_user', 31::smallint, 0.0625);
SELECT asyncjobs._rollup_add(E'rep_q"uo\\te\nnl', 'regress_rep_user', 30::smallint, 0.03125);
-- the minute before: rep_alpha 4 succeeded (250 ms)
INSERT INTO asyncjobs.job_rollup (bucket, operation, ownerid, shard, succeeded,
                                  duration_sum, duration_hist)
VALUES (date_trunc('minute', now()) - interval '1 minute', 'rep_alpha', 'regress_rep_user', 0,
        4, 1.0, asyncjobs._hist_add(NULL, 0.25, 4));
-- 20 minutes ago: rep_beta 6 succeeded (2 s), 2 failed (4 s)
INSERT INTO asyncjobs.job_rollup (bucket, operation, ownerid, shard, succeeded, failed,
                                  duration_sum, duration_hist)
VALUES (date_trunc('minute', now()) - interval '20 minutes', 'rep_beta', 'regress_rep_user', 3,
        6, 2, 20.0, asyncjobs._hist_add(asyncjobs._hist_add(NULL, 2.0, 6), 4.0, 2));
-- 3 hours ago (an hourly row): rep_beta 30 succeeded, 10 failed (1 s), 5 retries;
-- 3 days ago: rep_gamma 7 succeeded (3 s)
INSERT INTO asyncjobs.job_rollup (bucket, operation, ownerid, shard, succeeded, failed,
                                  retries, duration_sum, duration_hist)
VALUES (date_trunc('hour', now()) - interval '3 hours', 'rep_beta', 'regress_rep_user', -1,
        30, 10, 5, 40.0, asyncjobs._hist_add(NULL, 1.0, 40)),
       (date_trunc('hour', now()) - interval '3 days', 'rep_gamma', 'regress_rep_user', -1,
        7, 0, 0, 21.0, asyncjobs._hist_add(NULL, 3.0, 7));
-- another role's figures, which regress_rep_user must not see
INSERT INTO asyncjobs.job_rollup (bucket, operation, ownerid, shard, succeeded,
                                  duration_sum, duration_hist)
VALUES (date_trunc('minute', now()) - interval '5 minutes', 'rep_alpha', 'regress_rep_other', 0,
        100, 100.0, asyncjobs._hist_add(NULL, 1.0, 100));

-- backlog samples two hours back (one bin of the day's report):
-- peaks ready 7, suspended 2, in progress 1
INSERT INTO asyncjobs.backlog_sample (sampled_at, operation, ownerid, ready, suspended,
                                      in_progress, oldest_ready_age)
VALUES (date_trunc('hour', now()) - interval '2 hours' + interval '5 minutes', 'rep_ext',
        'regress_rep_user', 5, 2, 1, '10 seconds'),
       (date_trunc('hour', now()) - interval '2 hours' + interval '6 minutes', 'rep_ext',
        'regress_rep_user', 7, 1, 0, '70 seconds');

-- failed jobs of the last hour, whose messages are user data
INSERT INTO asyncjobs.job_history (asyncoperationid, name, operationtype, messagename,
       statuscode, ownerid, createdon, modifiedon, completedon, retrycount, maxretries,
       errorcode, message, friendlymessage, data, priority, depth, correlationid,
       correlationupdatedtime, attempts)
SELECT -g, 'hostile', 1, 'rep_<script>alert(1)</script>', 31, 'regress_rep_user',
       now(), now(), now() - interval '10 minutes', 0, 0, 'P0001',
       format('order %s rejected by <img src=x onerror=alert(1)>', g),
       format('order %s rejected by <img src=x onerror=alert(1)>', g),
       '{}', 0, 1, gen_random_uuid(), now(), '[]'
  FROM generate_series(1, 3) g;
INSERT INTO asyncjobs.job_history (asyncoperationid, name, operationtype, messagename,
       statuscode, ownerid, createdon, modifiedon, completedon, retrycount, maxretries,
       errorcode, message, friendlymessage, data, priority, depth, correlationid,
       correlationupdatedtime, attempts)
SELECT -4, 'beta', 1, 'rep_beta', 31, 'regress_rep_user', now(), now(),
       now() - interval '10 minutes', 0, 0, '57014', 'canceling statement due to statement timeout',
       'canceling statement due to statement timeout', '{}', 0, 1, gen_random_uuid(), now(), '[]';

-- active jobs of an operation without a handler (the workers leave them
-- alone): 4 due for 90 s, one of them taken by an external worker whose
-- lease then ran out (stuck), 2 postponed, 1 paused; and 1 due for 30 s
-- of another operation
SET ROLE regress_rep_user;
SELECT asyncjobs.register_operation('rep_ext');
SELECT asyncjobs.register_operation('rep_ext2');
SELECT count(asyncjobs.enqueue('rep_ext', postpone_until => now() - interval '90 seconds')) AS due
  FROM generate_series(1, 4);
SELECT count(asyncjobs.enqueue('rep_ext', postpone_until => now() + interval '1 hour')) AS postponed
  FROM generate_series(1, 2);
SELECT asyncjobs.pause(asyncjobs.enqueue('rep_ext'));
SELECT count(*) AS claimed FROM asyncjobs.claim(ARRAY['rep_ext'], 1);
SELECT count(asyncjobs.enqueue('rep_ext2', postpone_until => now() - interval '30 seconds')) AS due;
RESET ROLE;
UPDATE asyncjobs.job SET leaseexpires = now() - interval '1 second'
 WHERE messagename = 'rep_ext' AND statecode = 2;

--------------------------------------------------------------------------
-- dashboard (the title's health checks and the workers depend on the
-- server, not on the history: masked)
--------------------------------------------------------------------------
SET ROLE regress_rep_user;
SELECT regexp_replace(regexp_replace(line, 'health: .*', 'health: (masked)'),
                      '^(WORKERS +).*', '\1(masked)') AS line
  FROM asyncjobs.dashboard
 WHERE line NOT LIKE '  pid %';
RESET ROLE;

--------------------------------------------------------------------------
-- metrics()
--------------------------------------------------------------------------
SET ROLE regress_rep_user;
-- every family, and every sample of the operations of this test
SELECT line FROM pg_temp.metric_lines()
 WHERE line LIKE '#%' OR line LIKE '%operation="rep\_%' OR line LIKE 'asyncjobs\_stuck\_jobs{%'
 ORDER BY n;
-- every line is a comment or a sample of the exposition format, and the
-- page ends with a newline
SELECT count(*) AS lines,
       count(*) FILTER (WHERE line !~ '^(# (HELP|TYPE) asyncjobs_[a-z_]+ .+|asyncjobs_[a-z_]+\{database="contrib_regression"(,[a-z_]+="([^"\\]|\\.)*")*\} (NaN|[+-]Inf|-?[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?))$') AS malformed,
       right(asyncjobs.metrics(), 1) = E'\n' AS ends_with_newline
  FROM pg_temp.metric_lines() WHERE line <> '';
-- one HELP and one TYPE per family, before its samples
SELECT count(*) FILTER (WHERE line LIKE '# HELP %') AS help,
       count(*) FILTER (WHERE line LIKE '# TYPE %') AS type,
       count(DISTINCT split_part(line, ' ', 3)) FILTER (WHERE line LIKE '# %') AS families
  FROM pg_temp.metric_lines();
SELECT count(*) AS samples_before_their_type
  FROM pg_temp.metric_lines() s
 WHERE s.line NOT LIKE '#%' AND s.line <> ''
   AND NOT EXISTS (SELECT 1 FROM pg_temp.metric_lines() t
                    WHERE t.n < s.n AND t.line LIKE '# TYPE %'
                      AND s.line LIKE split_part(t.line, ' ', 3) || '%');
-- the server's figures: one line per health check (0, 1 or 2), the
-- workers by state
SELECT count(*) = (SELECT count(*) FROM asyncjobs.health()) AS one_per_check,
       bool_and(line ~ ' [012]$') AS graded
  FROM pg_temp.metric_lines() WHERE line LIKE 'asyncjobs\_health\_status{%';
SELECT regexp_replace(line, ' [0-9]+$', ' N') AS line
  FROM pg_temp.metric_lines() WHERE line LIKE 'asyncjobs\_workers%{%' ORDER BY n;
RESET ROLE;

-- another role sees none of these figures, an admin sees every role's
SET ROLE regress_rep_other;
SELECT line FROM pg_temp.metric_lines()
 WHERE line LIKE 'asyncjobs\_jobs\_completed\_total{%operation="rep\_%' ORDER BY n;
SET ROLE regress_rep_admin;
SELECT line FROM pg_temp.metric_lines()
 WHERE line LIKE 'asyncjobs\_jobs\_completed\_total{%operation="rep\_alpha"%' ORDER BY n;
RESET ROLE;

--------------------------------------------------------------------------
-- report_html()
--------------------------------------------------------------------------
SET ROLE regress_rep_user;
CREATE TEMP TABLE rep_page AS SELECT asyncjobs.report_html('24 hours') AS h;
CREATE TEMP TABLE rep_page_30m AS SELECT asyncjobs.report_html('30 minutes') AS h;
RESET ROLE;

-- one page, with every section, and nothing it would load from elsewhere
SELECT h LIKE E'<!DOCTYPE html>\n<html lang="en">%' AS doctype,
       h LIKE E'%</body></html>\n' AS complete,
       (SELECT array_agg(m[1]) FROM regexp_matches(h, '<section id="([a-z-]+)"', 'g') m) AS sections,
       (SELECT array_agg(m[1]) FROM regexp_matches(h, '<svg class="chart [a-z]+" id="chart-([a-z0-9-]+)"', 'g') m) AS charts,
       (SELECT array_agg(m[1]) FROM regexp_matches(h, '<table id="([a-z-]+)"', 'g') m) AS tables,
       h ~* '<(script|img|iframe|link|object|embed)\M' AS active_content,
       h ~* '(https?:|//[a-z])' AS external_reference
  FROM rep_page;

-- user data is escaped: the operation named <script>, the message with
-- an <img onerror>, and the others' quote and backslash
SELECT position('<script' IN h) AS raw_script,
       position('<img' IN h) AS raw_img,
       (SELECT count(*) FROM regexp_matches(h, '&lt;script&gt;alert\(1\)&lt;/script&gt;', 'g')) AS escaped_name,
       (SELECT count(*) FROM regexp_matches(h, 'order N rejected by &lt;img src=x onerror=alert\(N\)&gt;', 'g')) AS escaped_message,
       position('rep_q&quot;uo\te' IN h) > 0 AS escaped_quote
  FROM rep_page;

-- summary tiles
SELECT array_agg(m[1] || ' = ' || m[2])
  FROM rep_page, regexp_matches(h, '<span class="k">([^<]+)</span><span class="v">([^<]+)</span>', 'g') m
 WHERE m[1] IN ('completed', 'succeeded', 'failed', 'canceled', 'failure rate', 'retries',
                'ready now', 'running now', 'oldest ready', 'stuck');

-- jobs per hour by outcome: 25 hourly bins; the bars add up to the
-- day's completions (49 succeeded, 15 failed, 1 canceled; not rep_gamma's
-- of 3 days ago)
SELECT (regexp_match(h, 'id="chart-throughput" data-chart="throughput" data-bins="(\d+)"'))[1] AS bins,
       (SELECT sum(v::int) FROM pg_temp.attr_values(h, '<rect class="bar ok" data-value="(\d+)"') v) AS succeeded,
       (SELECT sum(v::int) FROM pg_temp.attr_values(h, '<rect class="bar failed" data-value="(\d+)"') v) AS failed,
       (SELECT sum(v::int) FROM pg_temp.attr_values(h, '<rect class="bar canceled" data-value="(\d+)"') v) AS canceled
  FROM rep_page;
-- the last 30 minutes: 31 bins of a minute, without the hourly row
SELECT (regexp_match(h, 'data-chart="throughput" data-bins="(\d+)"'))[1] AS bins,
       (SELECT sum(v::int) FROM pg_temp.attr_values(h, '<rect class="bar ok" data-value="(\d+)"') v) AS succeeded,
       (SELECT sum(v::int) FROM pg_temp.attr_values(h, '<rect class="bar failed" data-value="(\d+)"') v) AS failed,
       h LIKE '%<h2>Jobs per minute by outcome</h2>%' AS per_minute
  FROM rep_page_30m;

-- failure rate and p95 by operation: one bar per operation that finished
-- jobs in the day, in name order, with its value
SELECT (regexp_match(h, 'data-chart="failure-rate" data-bars="(\d+)"'))[1] AS rate_bars,
       (regexp_match(h, 'data-chart="p95" data-bars="(\d+)"'))[1] AS p95_bars
  FROM rep_page;
SELECT b.* FROM rep_page, pg_temp.hbars(h, 'failure-rate') b;
SELECT b.operation, b.shown FROM rep_page, pg_temp.hbars(h, 'p95') b;
SELECT count(*) AS job_stats_rows
  FROM rep_page, regexp_matches(substring(h FROM '<table id="job-stats">.*?</table>'), '<tr><td>', 'g');

-- backlog over time: three lines of 25 points, peaking at 7 ready,
-- 2 suspended, 1 in progress in the bin of the samples
SELECT s AS series,
       (SELECT count(*) FROM pg_temp.attr_values(h, format('<circle class="pt %s" data-value="(\d+)"', s))) AS points,
       (SELECT max(v::int) FROM pg_temp.attr_values(h, format('<circle class="pt %s" data-value="(\d+)"', s)) v) AS peak,
       (SELECT sum(v::int) FROM pg_temp.attr_values(h, format('<circle class="pt %s" data-value="(\d+)"', s)) v) AS total,
       array_length(string_to_array((regexp_match(h, format('<polyline class="line %s" data-series="%s" points="([^"]*)"', s, s)))[1], ' '), 1) AS polyline_points
  FROM rep_page, unnest(ARRAY['ready', 'suspended', 'in_progress']) s;

-- failure clusters: the hostile operation's three failures in one row,
-- the timeout in another
SELECT m[1] AS errorcode, m[2] AS pattern, m[3] AS failures, m[4] AS operations
  FROM rep_page,
       regexp_matches(substring(h FROM '<table id="failure-clusters">.*?</table>'),
                      '<tr><td>[^<]*</td><td><code>([^<]*)</code></td><td>([^<]*)</td><td class="n">(\d+)</td><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td></tr>', 'g') m;

-- another role: the same page, without these figures
SET ROLE regress_rep_other;
SELECT (SELECT sum(v::int) FROM pg_temp.attr_values(h, '<rect class="bar ok" data-value="(\d+)"') v) AS succeeded,
       (regexp_match(h, 'data-chart="failure-rate" data-bars="(\d+)"'))[1] AS rate_bars
  FROM (SELECT asyncjobs.report_html('24 hours') AS h) p;
RESET ROLE;

--------------------------------------------------------------------------
-- Bad input (PostgreSQL 15 has no infinite interval: 'infinity' does not
-- parse; the function refuses one all the same, as job_stats() does)
--------------------------------------------------------------------------
SELECT pg_temp.try($$SELECT asyncjobs.report_html(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.report_html('0')$$);
SELECT pg_temp.try($$SELECT asyncjobs.report_html('-1 hour')$$);
SELECT pg_temp.try($$SELECT asyncjobs.report_html('1 day -25 hours')$$);
-- the default window is a day; a long one is drawn with at most 73 bins
SELECT asyncjobs.report_html() LIKE '%&middot; last 1 day &middot;%' AS default_day;
SELECT (regexp_match(asyncjobs.report_html('10 years'), 'data-chart="throughput" data-bins="(\d+)"'))[1]::int <= 73 AS few_bins;

ROLLBACK;

-- nothing of the history is left
SELECT count(*) AS rollups_left FROM asyncjobs.job_rollup WHERE operation LIKE 'rep\_%';
SELECT count(*) AS jobs_left FROM asyncjobs.asyncoperation WHERE messagename LIKE 'rep\_%';
DROP ROLE regress_rep_user, regress_rep_other, regress_rep_admin;
