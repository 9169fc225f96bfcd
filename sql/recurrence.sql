--
-- Recurrence patterns: asyncjobs._recurrence_step validates a pattern and
-- returns its step; asyncjobs._next_occurrence computes the next run.
--
-- quiet whether or not an earlier test created the extension
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS asyncjobs;
RESET client_min_messages;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';

-- runs a statement, returns "ok" or "SQLSTATE: message" (and the DETAIL)
CREATE FUNCTION pg_temp.try(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || SQLERRM
        || CASE WHEN d <> '' THEN E'\nDETAIL: ' || d ELSE '' END;
END
$$;

-- both functions: search_path pinned, immutable, strict, commented, and not
-- executable by PUBLIC (they are internal)
SELECT p.oid::regprocedure AS function, p.proconfig, p.provolatile,
       p.proisstrict, obj_description(p.oid, 'pg_proc') IS NOT NULL AS commented,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute
  FROM pg_proc p
 WHERE p.pronamespace = 'asyncjobs'::regnamespace
   AND p.proname IN ('_recurrence_step', '_next_occurrence')
 ORDER BY 1::text;

--
-- Valid patterns and their steps
--
SELECT pattern, asyncjobs._recurrence_step(pattern) AS step
  FROM (VALUES ('FREQ=MINUTELY'),
               ('FREQ=HOURLY'),
               ('FREQ=DAILY'),
               ('FREQ=WEEKLY'),
               ('FREQ=MONTHLY'),
               ('FREQ=MINUTELY;INTERVAL=15'),
               ('FREQ=HOURLY;INTERVAL=2'),
               ('FREQ=DAILY;INTERVAL=3'),
               ('FREQ=WEEKLY;INTERVAL=2'),
               ('FREQ=MONTHLY;INTERVAL=3'),
               ('FREQ=MONTHLY;INTERVAL=12'),
               ('FREQ=MINUTELY;INTERVAL=1000'),
               ('FREQ=WEEKLY;INTERVAL=1000'),
               ('FREQ=DAILY;INTERVAL=1'),
               ('FREQ=DAILY;INTERVAL=007'),
               ('INTERVAL=2;FREQ=HOURLY'),           -- any order
               ('freq=hourly;interval=2'),           -- case-insensitive
               ('Freq=Weekly;Interval=2'),
               (' FREQ = HOURLY ; INTERVAL = 2 '),   -- whitespace around = and ;
               (E'\tFREQ=DAILY;\n INTERVAL=4\r\n')) v(pattern)
 ORDER BY 2, 1;

SELECT asyncjobs._recurrence_step(NULL) IS NULL AS null_pattern_gives_null;

--
-- Invalid patterns: SQLSTATE 22023, the pattern in the message, what is
-- wrong in DETAIL, and the accepted form in HINT
--
CREATE FUNCTION pg_temp.bad(pattern text, OUT error text, OUT detail text,
                            OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM asyncjobs._recurrence_step(pattern);
    error := 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    error := SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE TEMP TABLE bad_patterns (n serial, pattern text);
INSERT INTO bad_patterns (pattern) VALUES
    -- empty
    (''), ('   '),
    -- empty parts
    ('FREQ=DAILY;'), (';FREQ=DAILY'), ('FREQ=DAILY;;INTERVAL=2'),
    ('FREQ=DAILY; ;INTERVAL=2'), (';'),
    -- not NAME=value
    ('DAILY'), ('FREQ DAILY'), ('FREQ:DAILY'), ('FREQ=DAILY,INTERVAL=2'),
    ('=DAILY'), ('FREQ=DAILY; = 2'), ('RRULE:FREQ=DAILY'),
    -- missing values
    ('FREQ='), ('FREQ=DAILY;INTERVAL='), ('FREQ=DAILY;INTERVAL = '),
    -- FREQ is required
    ('INTERVAL=2'),
    -- unknown or unsupported frequencies
    ('FREQ=FORTNIGHTLY'), ('FREQ=DAY'), ('FREQ=DA ILY'), ('FREQ=DAILY=2'),
    ('FREQ="DAILY"'), ('FREQ=YEARLY'), ('FREQ=secondly'),
    -- bad INTERVAL
    ('FREQ=DAILY;INTERVAL=0'), ('FREQ=DAILY;INTERVAL=000'),
    ('FREQ=DAILY;INTERVAL=1001'), ('FREQ=DAILY;INTERVAL=00001001'),
    ('FREQ=DAILY;INTERVAL=99999999999999999999'), ('FREQ=DAILY;INTERVAL=-1'),
    ('FREQ=DAILY;INTERVAL=+2'), ('FREQ=DAILY;INTERVAL=1.5'),
    ('FREQ=DAILY;INTERVAL=1e2'), ('FREQ=DAILY;INTERVAL=two'),
    ('FREQ=DAILY;INTERVAL=1 0'),
    -- duplicate parts (names compared case-insensitively)
    ('FREQ=DAILY;FREQ=DAILY'), ('FREQ=DAILY;freq=HOURLY'),
    ('FREQ=DAILY;INTERVAL=2;Interval=3'),
    -- RRULE parts we do not support
    ('FREQ=WEEKLY;BYDAY=MO,WE'), ('FREQ=DAILY;COUNT=10'),
    ('FREQ=DAILY;until=20250101T000000Z'), ('FREQ=MONTHLY;BYMONTHDAY=-1'),
    ('FREQ=DAILY;BYHOUR=9;BYMINUTE=30'), ('FREQ=WEEKLY;WKST=SU'),
    ('BYSETPOS=1;FREQ=MONTHLY'),
    -- unknown parts
    ('FREQ=DAILY;FOO=1'), ('FREQ=DAILY;Every=2'), ('FREQUENCY=DAILY'),
    -- the first problem is the one reported
    ('FREQ=DAILY;INTERVAL=0;COUNT=3'), ('COUNT=3;FREQ=NEVER');

-- helper prints "SQLSTATE: message"; the DETAIL says what is wrong
SELECT b.pattern, e.error, e.detail
  FROM bad_patterns b, pg_temp.bad(b.pattern) e
 ORDER BY b.n;

-- every message names the pattern, and every one has the same HINT
SELECT count(*) AS errors,
       count(*) FILTER (WHERE e.error = format('22023: invalid recurrence pattern "%s"', b.pattern))
           AS message_names_pattern,
       count(DISTINCT e.hint) AS hints, min(e.hint) AS hint
  FROM bad_patterns b, pg_temp.bad(b.pattern) e;

-- too long: the message shows only the start of the pattern
SELECT length(p) AS length, e.*
  FROM (SELECT 'FREQ=DAILY;INTERVAL=' || repeat('0', 300) || '1' AS p) x,
       pg_temp.bad(p) e;
SELECT e.error FROM pg_temp.bad(rpad('FREQ=DAILY;INTERVAL=1 ', 256)) e;

-- the same errors come from _next_occurrence
SELECT pg_temp.try($$SELECT asyncjobs._next_occurrence('FREQ=DAILY;COUNT=3', now(), now())$$);
SELECT pg_temp.try($$SELECT asyncjobs._next_occurrence('', now(), now())$$);
-- a real error shows the pattern, DETAIL and HINT (context cut: it names lines)
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT asyncjobs._recurrence_step('FREQ=HOURLY;INTERVAL=0');
SELECT asyncjobs._next_occurrence('FREQ=HOURLY;BYDAY=MO', '2024-01-01', '2024-01-02');
\set SHOW_CONTEXT errors

--
-- Next occurrences: the first start + k * step strictly later than after
--
SELECT pattern, start, after, asyncjobs._next_occurrence(pattern, start, after) AS next
  FROM (VALUES
    -- after before start, or -infinity: start itself
    ('FREQ=HOURLY', '2024-01-01 00:00'::timestamptz, '2023-12-31 23:59:59.999999'::timestamptz),
    ('FREQ=HOURLY', '2024-01-01 00:00', '2000-01-01 00:00'),
    ('FREQ=MONTHLY', '2024-01-31 10:00', '2024-01-31 09:59:59.999999'),
    ('FREQ=HOURLY', '2024-01-01 00:00', '-infinity'),
    -- after equal to start or to an occurrence: strictly later, the next one
    ('FREQ=HOURLY', '2024-01-01 00:00', '2024-01-01 00:00'),
    ('FREQ=HOURLY;INTERVAL=2', '2024-01-01 00:00', '2024-01-01 06:00'),
    ('FREQ=HOURLY;INTERVAL=2', '2024-01-01 00:00', '2024-01-01 05:59:59.999999'),
    ('FREQ=HOURLY;INTERVAL=2', '2024-01-01 00:00', '2024-01-01 05:30'),
    ('FREQ=HOURLY;INTERVAL=2', '2024-01-01 00:00', '2024-01-01 06:00:00.000001'),
    -- microseconds of start are kept
    ('FREQ=MINUTELY;INTERVAL=15', '2024-01-01 10:07:30.123456', '2024-01-01 11:00'),
    ('FREQ=MINUTELY;INTERVAL=15', '2024-01-01 10:07:30.123456', '2024-01-01 11:07:30.123456'),
    ('FREQ=MINUTELY;INTERVAL=15', '2024-01-01 10:07:30.123456', '2024-01-01 11:07:30.123455'),
    ('FREQ=MINUTELY', '2024-01-01 00:00:00.000001', '2024-01-01 00:59:59.999999'),
    ('FREQ=MINUTELY', '2024-01-01 00:00:00.000001', '2024-01-01 01:00:00.000001'),
    -- days and weeks, across a year end and a leap day
    ('FREQ=DAILY', '2024-02-27 08:00', '2024-02-28 08:00'),
    ('FREQ=DAILY', '2024-02-27 08:00', '2024-02-29 12:00'),
    ('FREQ=DAILY;INTERVAL=3', '2023-12-30 23:30', '2024-01-01 00:00'),
    ('FREQ=WEEKLY', '2024-01-01 09:00', '2024-02-14 00:00'),
    ('FREQ=WEEKLY;INTERVAL=2', '2024-01-01 09:00', '2024-01-15 09:00'),
    ('FREQ=WEEKLY;INTERVAL=1000', '2024-01-01 09:00', '2024-01-01 09:00'),
    -- months: calendar months from start, the day clamped to the month's end
    ('FREQ=MONTHLY', '2024-01-31 10:00', '2024-01-31 10:00'),
    ('FREQ=MONTHLY', '2024-01-31 10:00', '2024-02-29 09:59'),
    ('FREQ=MONTHLY', '2024-01-31 10:00', '2024-02-29 10:00'),
    ('FREQ=MONTHLY', '2024-01-31 10:00', '2024-03-31 09:59:59.999999'),
    ('FREQ=MONTHLY', '2024-01-31 10:00', '2024-03-31 10:00'),
    ('FREQ=MONTHLY', '2024-01-31 10:00', '2024-04-15 00:00'),
    ('FREQ=MONTHLY', '2023-01-31 10:00', '2023-02-01 00:00'),
    ('FREQ=MONTHLY', '2024-01-15 10:00', '2024-03-15 09:00'),
    ('FREQ=MONTHLY', '2024-01-15 10:00', '2024-03-15 11:00'),
    ('FREQ=MONTHLY', '2024-01-15 10:00', '2024-03-31 23:59'),
    ('FREQ=MONTHLY;INTERVAL=3', '2023-11-30 06:00', '2024-02-01 00:00'),
    ('FREQ=MONTHLY;INTERVAL=3', '2023-11-30 06:00', '2024-03-01 00:00'),
    ('FREQ=MONTHLY;INTERVAL=3', '2023-11-30 06:00', '2024-02-29 06:00'),
    ('FREQ=MONTHLY;INTERVAL=12', '2024-02-29 12:00', '2024-03-01 00:00'),
    ('FREQ=MONTHLY;INTERVAL=12', '2024-02-29 12:00', '2027-06-01 00:00'),
    ('FREQ=MONTHLY;INTERVAL=12', '2024-02-29 12:00', '2028-02-29 12:00'),
    -- large gaps, computed without stepping through every occurrence
    ('FREQ=MINUTELY', '2000-01-01 00:00', '2999-12-31 23:59:30'),
    ('FREQ=MINUTELY', '0001-01-01 00:00:00.5', '290000-06-15 12:34:56.789'),
    ('FREQ=MINUTELY', '4713-01-01 00:00 BC', '294276-12-31 23:58:59.999999'),
    ('FREQ=HOURLY;INTERVAL=7', '1970-01-01 00:00', '2024-06-15 12:00'),
    ('FREQ=DAILY', '2000-01-01 03:00', '9999-12-30 12:00'),
    ('FREQ=WEEKLY;INTERVAL=3', '1900-01-01 00:00', '2100-01-01 00:00'),
    ('FREQ=MONTHLY', '2000-01-31 00:00', '9999-12-15 00:00'),
    ('FREQ=MONTHLY;INTERVAL=7', '1000-01-31 00:00', '200000-01-01 00:00'),
    -- across the year 1 BC / AD 1 boundary (there is no year 0)
    ('FREQ=MONTHLY', '0001-12-15 00:00 BC', '0001-01-20 00:00'),
    ('FREQ=MONTHLY', '0002-11-30 00:00 BC', '0001-02-01 00:00 BC'),
    ('FREQ=DAILY', '0001-12-31 12:00 BC', '0001-01-01 00:00')
  ) v(pattern, start, after)
 ORDER BY pattern, start, after;

-- a monthly rule is never accumulated: Jan 31 -> Feb 29 -> Mar 31 -> Apr 30 ...
WITH RECURSIVE occ(n, t) AS (
    SELECT 0, '2024-01-31 10:00'::timestamptz
    UNION ALL
    SELECT n + 1, asyncjobs._next_occurrence('FREQ=MONTHLY', '2024-01-31 10:00', t)
      FROM occ WHERE n < 13
)
SELECT n, t, to_char(t, 'Dy') AS dow FROM occ ORDER BY n;

-- the same every two months from Aug 31, and every month from Feb 29
WITH RECURSIVE occ(n, t) AS (
    SELECT 0, '2023-08-31 23:59:59'::timestamptz
    UNION ALL
    SELECT n + 1, asyncjobs._next_occurrence('FREQ=MONTHLY;INTERVAL=2', '2023-08-31 23:59:59', t)
      FROM occ WHERE n < 7
)
SELECT n, t FROM occ ORDER BY n;

WITH RECURSIVE occ(n, t) AS (
    SELECT 0, '2024-02-29 00:00'::timestamptz
    UNION ALL
    SELECT n + 1, asyncjobs._next_occurrence('FREQ=MONTHLY', '2024-02-29 00:00', t)
      FROM occ WHERE n < 13
)
SELECT n, t FROM occ ORDER BY n;

-- each occurrence of a fixed step is exactly start + k * step, later than
-- after, and the one before it is not
SELECT pattern, count(*) AS cases,
       bool_and(nxt > after) AS later,
       bool_and(nxt = start OR nxt - asyncjobs._recurrence_step(pattern) <= after) AS first,
       bool_and(extract(epoch FROM nxt - start)::numeric
                % extract(epoch FROM asyncjobs._recurrence_step(pattern)) = 0) AS on_grid
  FROM (SELECT p.pattern, s.start, a.after,
               asyncjobs._next_occurrence(p.pattern, s.start, a.after) AS nxt
          FROM (VALUES ('FREQ=MINUTELY'), ('FREQ=MINUTELY;INTERVAL=7'),
                       ('FREQ=HOURLY;INTERVAL=5'), ('FREQ=DAILY;INTERVAL=2'),
                       ('FREQ=WEEKLY')) p(pattern),
               (VALUES ('2024-03-09 17:00:00.25'::timestamptz),
                       ('1999-12-31 23:59:59.999999')) s(start),
               (SELECT '2024-03-01'::timestamptz + i * interval '3 hours 17 minutes 0.123457 seconds'
                  FROM generate_series(0, 200) i) a(after)) x
 GROUP BY pattern ORDER BY pattern;

-- the result does not depend on the session's TimeZone: a daily rule keeps
-- its UTC time of day across a daylight saving change, and months are UTC
-- calendar months (each case below gives another result if computed in the
-- session's time zone)
SET TimeZone = 'America/New_York';
SELECT asyncjobs._next_occurrence('FREQ=DAILY', '2024-03-09 17:00+00', '2024-03-10 18:00+00')
       = '2024-03-11 17:00+00' AS daily_new_york,
       asyncjobs._next_occurrence('FREQ=WEEKLY', '2024-10-28 12:00+00', '2024-11-04 00:00+00')
       = '2024-11-04 12:00+00' AS weekly_new_york,
       asyncjobs._next_occurrence('FREQ=MONTHLY', '2024-03-01 02:00+00', '2024-03-02 00:00+00')
       = '2024-04-01 02:00+00' AS monthly_new_york;
SET TimeZone = 'Pacific/Kiritimati';
SELECT asyncjobs._next_occurrence('FREQ=MONTHLY', '2024-03-30 20:00+00', '2024-04-01 00:00+00')
       = '2024-04-30 20:00+00' AS monthly_kiritimati;
SET TimeZone = 'Europe/Berlin';
SELECT asyncjobs._next_occurrence('FREQ=DAILY', '2024-03-30 12:00+00', '2024-03-30 12:00+00')
       = '2024-03-31 12:00+00' AS daily_berlin,
       asyncjobs._next_occurrence('FREQ=MONTHLY', '2024-04-30 22:30+00', '2024-05-01 00:00+00')
       = '2024-05-30 22:30+00' AS monthly_berlin;
SET TimeZone = 'UTC';

-- NULL in, NULL out
SELECT asyncjobs._next_occurrence(NULL, '2024-01-01', '2024-01-02') IS NULL AS null_pattern,
       asyncjobs._next_occurrence('FREQ=DAILY', NULL, '2024-01-02') IS NULL AS null_start,
       asyncjobs._next_occurrence('FREQ=DAILY', '2024-01-01', NULL) IS NULL AS null_after;

-- infinite start or after, and a result past the end of time
SELECT pg_temp.try($$SELECT asyncjobs._next_occurrence('FREQ=DAILY', 'infinity', '2024-01-01')$$);
SELECT pg_temp.try($$SELECT asyncjobs._next_occurrence('FREQ=DAILY', '-infinity', '2024-01-01')$$);
SELECT pg_temp.try($$SELECT asyncjobs._next_occurrence('FREQ=DAILY', '2024-01-01', 'infinity')$$);
SELECT pg_temp.try($$SELECT asyncjobs._next_occurrence('FREQ=DAILY', '294276-12-31 00:00', '294276-12-31 00:00')$$);
SELECT pg_temp.try($$SELECT asyncjobs._next_occurrence('FREQ=MONTHLY', '294276-12-15 00:00', '294276-12-20 00:00')$$);
