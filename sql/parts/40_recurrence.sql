/* sql/parts/40_recurrence.sql: recurrence patterns (an RFC 2445 RRULE subset) */

--------------------------------------------------------------------------
-- Recurrence patterns
--------------------------------------------------------------------------
--
-- Accepted form (a subset of RFC 2445 / 5545 RRULE):
--
--     FREQ=MINUTELY|HOURLY|DAILY|WEEKLY|MONTHLY[;INTERVAL=n]
--
--   * parts are NAME=value, separated by ';', in any order;
--   * names and FREQ values are case-insensitive (compared in the "C"
--     collation, so the database's locale does not matter);
--   * whitespace (space, tab, newline, carriage return, form feed, vertical
--     tab) is allowed around names, values, '=' and ';', and at both ends;
--   * FREQ is required; INTERVAL is optional (default 1) and is an unsigned
--     decimal integer from 1 to 1000;
--   * each part at most once; no empty part (so no ';' at the start or end
--     and no ';;'); no "RRULE:" prefix; at most 256 characters in all;
--   * every other RRULE part (COUNT, UNTIL, BYDAY, BYMONTHDAY, WKST, ...) and
--     FREQ=SECONDLY / YEARLY are rejected as not supported, anything else as
--     unknown.
--
-- The step is n minutes, n hours, n days, 7n days or n months.  Occurrences
-- are start + k * step (k = 0, 1, 2, ...), computed from start each time (so
-- a monthly rule from January 31 gives February 28/29, then March 31) and in
-- UTC, so they do not depend on the session's TimeZone.  The next
-- occurrence after a time before start is start itself.

-- Validates a recurrence pattern and returns its step.  Any problem raises
-- SQLSTATE 22023 with the pattern in the message, what is wrong in DETAIL
-- and the accepted form in HINT.
CREATE FUNCTION asyncjobs._recurrence_step(pattern text)
RETURNS interval
LANGUAGE plpgsql
IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ws       constant text := E' \t\n\r\f' || chr(11);
    max_len  constant int := 256;
    hint_txt constant text :=
        'Write FREQ=MINUTELY, HOURLY, DAILY, WEEKLY or MONTHLY, optionally '
        'followed by ;INTERVAL=n with n from 1 to 1000, '
        'e.g. FREQ=HOURLY;INTERVAL=2.';
    part     text;
    eq       int;
    raw_name text;
    pname    text;
    value    text;
    seen     text[] := '{}';
    freq     text;
    n        int := 1;
    problem  text;
BEGIN
    IF length(pattern) > max_len THEN
        RAISE EXCEPTION 'invalid recurrence pattern "%..."', left(pattern, 60)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The pattern is %s characters long; the longest accepted is %s.',
                                  length(pattern), max_len),
                  HINT = hint_txt;
    END IF;

    IF btrim(pattern, ws) = '' THEN
        problem := 'The pattern is empty.';
    ELSE
        FOREACH part IN ARRAY string_to_array(pattern, ';') LOOP
            part := btrim(part, ws);
            IF part = '' THEN
                problem := 'The pattern has an empty part (a '';'' at the start or end, or two in a row).';
                EXIT;
            END IF;
            eq := strpos(part, '=');
            IF eq = 0 THEN
                problem := format('Part "%s" is not of the form NAME=value.', part);
                EXIT;
            END IF;
            raw_name := rtrim(left(part, eq - 1), ws);
            pname := upper(raw_name COLLATE "C");
            value := ltrim(substr(part, eq + 1), ws);
            IF raw_name = '' THEN
                problem := format('Part "%s" has no name.', part);
                EXIT;
            END IF;
            IF pname LIKE 'RRULE:%' THEN
                problem := 'The "RRULE:" prefix is not accepted: write the rule alone.';
                EXIT;
            END IF;
            IF pname NOT IN ('FREQ', 'INTERVAL') THEN
                IF pname IN ('COUNT', 'UNTIL', 'BYSECOND', 'BYMINUTE', 'BYHOUR',
                            'BYDAY', 'BYMONTHDAY', 'BYYEARDAY', 'BYWEEKNO',
                            'BYMONTH', 'BYSETPOS', 'WKST') THEN
                    problem := format('%s is not supported: only FREQ and INTERVAL are.', pname);
                ELSE
                    problem := format('Unknown part "%s": only FREQ and INTERVAL are accepted.', raw_name);
                END IF;
                EXIT;
            END IF;
            IF pname = ANY (seen) THEN
                problem := format('%s is given more than once.', pname);
                EXIT;
            END IF;
            seen := seen || pname;
            IF value = '' THEN
                problem := format('%s has no value.', pname);
                EXIT;
            END IF;

            IF pname = 'FREQ' THEN
                freq := upper(value COLLATE "C");
                IF freq IN ('SECONDLY', 'YEARLY') THEN
                    problem := format('FREQ=%s is not supported%s.', freq,
                                      CASE freq WHEN 'YEARLY'
                                      THEN ' (FREQ=MONTHLY;INTERVAL=12 recurs yearly)'
                                      ELSE '' END);
                    EXIT;
                ELSIF freq NOT IN ('MINUTELY', 'HOURLY', 'DAILY', 'WEEKLY', 'MONTHLY') THEN
                    problem := format('Unknown frequency "%s"%s.', value,
                                      CASE WHEN value ~ '[,=]'
                                      THEN ' (parts are separated by '';'')'
                                      ELSE '' END);
                    EXIT;
                END IF;
            ELSE  -- INTERVAL
                IF value !~ '^[0-9]+$' THEN
                    problem := format('INTERVAL must be a positive integer, not "%s".', value);
                    EXIT;
                END IF;
                -- at most 4 significant digits: no overflow in the cast
                IF length(ltrim(value, '0')) <= 4 THEN
                    n := value::int;
                END IF;
                IF length(ltrim(value, '0')) > 4 OR n NOT BETWEEN 1 AND 1000 THEN
                    problem := format('INTERVAL must be between 1 and 1000, not %s.', value);
                    EXIT;
                END IF;
            END IF;
        END LOOP;

        IF problem IS NULL AND freq IS NULL THEN
            problem := 'FREQ is missing.';
        END IF;
    END IF;

    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid recurrence pattern "%"', pattern
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = problem,
                  HINT = hint_txt;
    END IF;

    RETURN CASE freq
        WHEN 'MINUTELY' THEN make_interval(mins => n)
        WHEN 'HOURLY'   THEN make_interval(hours => n)
        WHEN 'DAILY'    THEN make_interval(days => n)
        WHEN 'WEEKLY'   THEN make_interval(days => 7 * n)
        WHEN 'MONTHLY'  THEN make_interval(months => n)
    END;
END
$$;

COMMENT ON FUNCTION asyncjobs._recurrence_step(text) IS
'validates a recurrence pattern FREQ=MINUTELY|HOURLY|DAILY|WEEKLY|MONTHLY[;INTERVAL=n] (case-insensitive, whitespace allowed around = and ;, n from 1 to 1000) and returns its step: n minutes, hours, days, 7n days or n months; NULL for NULL; SQLSTATE 22023 on an invalid pattern';

-- The first occurrence start + k * step (k >= 0) strictly later than after.
-- Computed arithmetically in UTC, without stepping through the occurrences
-- in between: for fixed-length steps, k from the gap in microseconds; for
-- months, k from the number of calendar months between start and after
-- (then at most one step more, for an occurrence in after's own month that
-- is not later than after).  Months are added to start each time, never
-- accumulated, so the day of the month is clamped only where needed.
CREATE FUNCTION asyncjobs._next_occurrence(pattern text, start timestamptz,
                                           after timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql
IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    step     interval;
    s        timestamp;   -- start and after as UTC wall-clock times
    a        timestamp;
    step_min bigint;      -- fixed-length step, in minutes
    k        bigint;
    total    bigint;
    n        int;         -- monthly step, in months
    sy       int;
    ay       int;
    t        timestamp;
BEGIN
    step := asyncjobs._recurrence_step(pattern);

    IF NOT isfinite(start) THEN
        RAISE EXCEPTION 'recurrence start must be finite, not %', start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF after < start THEN          -- includes after = -infinity
        RETURN start;
    END IF;
    IF NOT isfinite(after) THEN    -- +infinity
        RAISE EXCEPTION 'no recurrence is later than infinity'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    s := start AT TIME ZONE 'UTC';
    a := after AT TIME ZONE 'UTC';

    IF extract(month FROM step) = 0 AND extract(year FROM step) = 0 THEN
        -- minutes, hours, days or weeks: every step has the same length
        step_min := (extract(epoch FROM step) / 60)::bigint;
        -- whole steps in the gap (>= 0), in exact numeric arithmetic: the
        -- gap in microseconds may not fit in a bigint, and extract(epoch)
        -- of a timestamp near the end of time drops its microseconds, so
        -- the gap is whole days plus the difference of the times of day
        k := div((a::date - s::date)::numeric * 86400000000
                 + (extract(epoch FROM a::time) - extract(epoch FROM s::time)) * 1000000,
                 step_min * 60000000)::bigint + 1;
        total := k * step_min;
        t := s + make_interval(days => (total / 1440)::int,
                               mins => (total % 1440)::int);
    ELSE
        n := (extract(year FROM step) * 12 + extract(month FROM step))::int;
        -- extract(year) has no year 0 (1 BC is -1): make the years contiguous
        sy := extract(year FROM s)::int;
        sy := sy + CASE WHEN sy < 0 THEN 1 ELSE 0 END;
        ay := extract(year FROM a)::int;
        ay := ay + CASE WHEN ay < 0 THEN 1 ELSE 0 END;
        -- occurrence k falls in the month start's month + k * n: before
        -- after's month it is earlier than after, past it later
        k := ((ay * 12 + extract(month FROM a)::int)
              - (sy * 12 + extract(month FROM s)::int)) / n;  -- >= 0
        LOOP
            t := s + make_interval(months => (k * n)::int);
            EXIT WHEN t > a;
            k := k + 1;
        END LOOP;
    END IF;

    RETURN t AT TIME ZONE 'UTC';
END
$$;

COMMENT ON FUNCTION asyncjobs._next_occurrence(text, timestamptz, timestamptz) IS
'first occurrence start + k * step (k >= 0) of the recurrence pattern that is strictly later than after: start itself when after < start; months are calendar months added to start (Jan 31 -> Feb 28/29 -> Mar 31); computed in UTC, independent of TimeZone; NULL if an argument is NULL; SQLSTATE 22023 for an invalid pattern, an infinite start or after = infinity';
