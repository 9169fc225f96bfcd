--
-- Bad input catalogue: every public function of asyncjobs called with
-- NULLs, empty strings, negative, zero and huge numbers, invalid intervals,
-- timestamps and recurrences, unknown operations, tables and jobs, objects
-- of the wrong kind, oversized payloads and malformed SQL.  Each call gets
-- a clear error with a proper SQLSTATE, and changes nothing: a fingerprint
-- of every table of the extension, taken before the catalogue, is the same
-- after it.
--
-- The calls run through pg_temp.try(call), which evaluates the expression
-- and shows "SQLSTATE: message", or "ok[: result]" for the few calls that
-- are accepted on purpose and change nothing.  In a call, {name} stands for
-- a fixture (a job id or a lease token made below); "job <id>" in a
-- message reads "job {name}" again, so the output does not depend on ids.
--
-- Everything this file makes is named bi_* and removed at the end.
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

CREATE TEMP TABLE bi_fixture (name text PRIMARY KEY, value text NOT NULL);

CREATE FUNCTION pg_temp.try(call text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    f      record;
    cmd    text := call;
    result text;
    outcome text;
BEGIN
    FOR f IN SELECT * FROM bi_fixture LOOP
        cmd := replace(cmd, '{' || f.name || '}', f.value);
    END LOOP;
    BEGIN
        EXECUTE format('SELECT (%s)::text', cmd) INTO result;
        outcome := CASE WHEN result IS NULL THEN 'ok: NULL'
                        WHEN result = '' THEN 'ok'
                        ELSE 'ok: ' || result END;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE || ': ' || SQLERRM;
    END;
    FOR f IN SELECT * FROM bi_fixture LOOP
        outcome := replace(outcome, 'job ' || f.value || ' ', 'job {' || f.name || '} ');
    END LOOP;
    RETURN outcome;
END
$$;

-- jsonb of exactly this many bytes (as the payload limit measures it)
CREATE FUNCTION pg_temp.sized(bytes int) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('x', repeat('x', bytes - 13)) $$;

-- every row of every table of the extension, and the step triggers
CREATE FUNCTION pg_temp.fingerprint() RETURNS TABLE (tbl text, n bigint, hash text)
LANGUAGE sql AS $$
    SELECT 'job', count(*), md5(string_agg(t::text, '|' ORDER BY t.asyncoperationid))
      FROM asyncjobs.job t
    UNION ALL
    SELECT 'job_history', count(*), md5(string_agg(t::text, '|' ORDER BY t.asyncoperationid))
      FROM asyncjobs.job_history t
    UNION ALL
    SELECT 'operation_type', count(*), md5(string_agg(t::text, '|' ORDER BY t.name))
      FROM asyncjobs.operation_type t
    UNION ALL
    SELECT 'plugintracelog', count(*), md5(string_agg(t::text, '|' ORDER BY t.plugintracelogid))
      FROM asyncjobs.plugintracelog t
    UNION ALL
    SELECT 'bulkdelete_progress', count(*), md5(string_agg(t::text, '|' ORDER BY t.asyncoperationid))
      FROM asyncjobs.bulkdelete_progress t
    UNION ALL
    SELECT 'bulkdeletefailure', count(*),
           md5(string_agg(t::text, '|' ORDER BY t.asyncoperationid, t.regardingobjectid))
      FROM asyncjobs.bulkdeletefailure t
    UNION ALL
    SELECT 'job_rollup', count(*), md5(string_agg(t::text, '|' ORDER BY t.bucket, t.operation, t.ownerid, t.shard))
      FROM asyncjobs.job_rollup t
    UNION ALL
    SELECT 'step', count(*), md5(string_agg(t::text, '|' ORDER BY t.target, t.event, t.operation))
      FROM asyncjobs.step t
    UNION ALL
    SELECT 'step triggers', count(*),
           md5(string_agg(t.tgrelid::regclass || '.' || t.tgname, '|' ORDER BY t.tgrelid, t.tgname))
      FROM pg_trigger t WHERE t.tgname LIKE 'asyncjobs\_step\_%'
$$;

--------------------------------------------------------------------------
-- Fixtures
--------------------------------------------------------------------------

CREATE FUNCTION bi_handler(data jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT data';
CREATE FUNCTION bi_two_args(data jsonb, n int) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION bi_set(data jsonb) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE bi_proc(data jsonb) LANGUAGE sql AS '';
-- no handler: for external workers, so no background worker touches its jobs
SELECT asyncjobs.register_operation('bi_ext');
SELECT asyncjobs.register_operation('bi_handled', 'bi_handler(jsonb)');
CREATE TABLE bi_table (id int PRIMARY KEY, note text);
CREATE TABLE bi_nokey (id int);
CREATE VIEW bi_view AS SELECT * FROM bi_table;
CREATE SEQUENCE bi_seq;
CREATE TEMP TABLE bi_temp (id int PRIMARY KEY);

-- a Succeeded job, a job held by an external worker, a Ready job
SELECT asyncjobs.enqueue('bi_ext', name => 'bi done') AS done \gset
SELECT token AS done_token FROM asyncjobs.claim(ARRAY['bi_ext'], lease => '1 hour') \gset
SELECT asyncjobs.complete(:done, :'done_token');
SELECT asyncjobs.enqueue('bi_ext', name => 'bi held') AS held \gset
SELECT token AS token FROM asyncjobs.claim(ARRAY['bi_ext'], lease => '1 hour') \gset
SELECT asyncjobs.enqueue('bi_ext', name => 'bi ready') AS ready \gset
INSERT INTO bi_fixture VALUES ('done', :'done'), ('done_token', :'done_token'),
    ('held', :'held'), ('token', :'token'), ('ready', :'ready');
SELECT f.name, a.statecode, a.statuscode
  FROM bi_fixture f JOIN asyncjobs.asyncoperation a ON a.asyncoperationid::text = f.value
 ORDER BY a.asyncoperationid;

-- Wait until no job of an earlier test is still due or running (the
-- workers would change it under the fingerprint), then take it.
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        EXIT WHEN NOT EXISTS (
            SELECT 1 FROM asyncjobs.job j
              JOIN asyncjobs.operation_type t ON t.name = j.messagename
             WHERE (t.handler IS NOT NULL OR t.builtin)
               AND (j.statecode = 2
                    OR (j.statuscode IN (0, 10, 11) AND NOT t.paused
                        AND j.runafter < now() + interval '5 minutes')));
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
CREATE TEMP TABLE bi_before AS SELECT * FROM pg_temp.fingerprint();

--------------------------------------------------------------------------
-- The catalogue
--------------------------------------------------------------------------
--
-- Accepted still: enqueue('bulk_delete', <data>) skips bulk_delete()'s
-- checks (the job then fails in the worker with the reason, and runs as
-- its owner, with the owner's privileges only).

-- register_operation(name, handler, max_retries, retry_delay,
--                    retry_delay_max, timeout, max_concurrency, priority)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.register_operation(NULL)$$,
    $$asyncjobs.register_operation('')$$,
    $$asyncjobs.register_operation(repeat('x', 64))$$,
    $$asyncjobs.register_operation('   ')$$,
    $$asyncjobs.register_operation(E'bi\tnew')$$,
    $$asyncjobs.register_operation(E'bi_new\n')$$,
    $$asyncjobs.register_operation('bi_new', 'abs(int)')$$,
    $$asyncjobs.register_operation('bi_new', 'bi_two_args(jsonb, int)')$$,
    $$asyncjobs.register_operation('bi_new', 'bi_set(jsonb)')$$,
    $$asyncjobs.register_operation('bi_new', 'bi_proc(jsonb)')$$,
    $$asyncjobs.register_operation('bi_new', 'bi_no_such_function(jsonb)')$$,
    $$asyncjobs.register_operation('bi_new', 0)$$,
    $$asyncjobs.register_operation('bi_new', max_retries => NULL)$$,
    $$asyncjobs.register_operation('bi_new', max_retries => -1)$$,
    $$asyncjobs.register_operation('bi_new', max_retries => -2147483648)$$,
    $$asyncjobs.register_operation('bi_new', retry_delay => NULL)$$,
    $$asyncjobs.register_operation('bi_new', retry_delay => '0')$$,
    $$asyncjobs.register_operation('bi_new', retry_delay => '-1 hour')$$,
    $$asyncjobs.register_operation('bi_new', retry_delay => '1 month -31 days')$$,
    $$asyncjobs.register_operation('bi_new', retry_delay => 'soon')$$,
    $$asyncjobs.register_operation('bi_new', retry_delay => '1000000 years', retry_delay_max => '1000000 years')$$,
    $$asyncjobs.register_operation('bi_new', retry_delay_max => '367 days')$$,
    $$asyncjobs.register_operation('bi_new', retry_delay_max => NULL)$$,
    $$asyncjobs.register_operation('bi_new', retry_delay_max => '-1 hour')$$,
    $$asyncjobs.register_operation('bi_new', retry_delay => '1 day', retry_delay_max => '1 hour')$$,
    $$asyncjobs.register_operation('bi_new', timeout => NULL)$$,
    $$asyncjobs.register_operation('bi_new', timeout => '0')$$,
    $$asyncjobs.register_operation('bi_new', timeout => '-1 hour')$$,
    $$asyncjobs.register_operation('bi_new', timeout => '25 days')$$,
    $$asyncjobs.register_operation('bi_new', timeout => '1000000 years')$$,
    $$asyncjobs.register_operation('bi_new', max_concurrency => 0)$$,
    $$asyncjobs.register_operation('bi_new', max_concurrency => -1)$$,
    $$asyncjobs.register_operation('bi_new', priority => NULL)$$,
    $$asyncjobs.register_operation('bi_new', priority => '2147483648')$$,
    $$asyncjobs.register_operation('sql', 'bi_handler(jsonb)')$$,
    $$asyncjobs.register_operation('bulk_delete', 'bi_handler(jsonb)')$$,
    $$asyncjobs.register_operation('bi_handled', 'bi_handler(jsonb)', max_retries => -1)$$
]) AS call;

-- enqueue(operation, data, name, priority, postpone_until, dependency_token,
--         dedupe_key, max_retries, recurrence, regarding)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.enqueue(NULL)$$,
    $$asyncjobs.enqueue(NULL, '{}')$$,
    $$asyncjobs.enqueue('')$$,
    $$asyncjobs.enqueue('bi_no_such_operation')$$,
    $$asyncjobs.enqueue('BI_EXT')$$,
    $$asyncjobs.enqueue('bi_ext', '{not json')$$,
    $$asyncjobs.enqueue('bi_ext', pg_temp.sized(2 * 1024 * 1024))$$,
    $$asyncjobs.enqueue('bi_ext', priority => '2147483648')$$,
    $$asyncjobs.enqueue('bi_ext', postpone_until => 'infinity')$$,
    $$asyncjobs.enqueue('bi_ext', postpone_until => '-infinity')$$,
    $$asyncjobs.enqueue('bi_ext', postpone_until => 'tomorrow-ish')$$,
    $$asyncjobs.enqueue('bi_ext', dependency_token => '')$$,
    $$asyncjobs.enqueue('bi_ext', dedupe_key => '')$$,
    $$asyncjobs.enqueue('bi_ext', name => '')$$,
    $$asyncjobs.enqueue('bi_ext', regarding => '')$$,
    $$asyncjobs.enqueue('bi_ext', dedupe_key => repeat('k', 1001))$$,
    $$asyncjobs.enqueue('bi_ext', dependency_token => repeat('k', 1001))$$,
    $$asyncjobs.enqueue('bi_ext', regarding => repeat('k', 1001))$$,
    $$asyncjobs.enqueue('bi_ext', name => repeat('k', 1001))$$,
    $$asyncjobs.enqueue('bi_ext', max_retries => -1)$$,
    $$asyncjobs.enqueue('bi_ext', max_retries => -2147483648)$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;INTERVAL=0')$$,
    $$asyncjobs.enqueue('sql')$$,
    $$asyncjobs.enqueue('sql', '{"command": 42}')$$,
    $$asyncjobs.enqueue('sql', '["SELECT 1"]')$$,
    $$asyncjobs.enqueue('sql', '{"command": "SELEC 1"}')$$,
    $$asyncjobs.enqueue('sql', '{"command": " ; "}')$$
]) AS call;

-- recurrence patterns (the same check for enqueue, enqueue_sql and bulk_delete)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.enqueue('bi_ext', recurrence => '')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => '   ')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'DAILY')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=SOMETIMES')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => '=DAILY')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=YEARLY')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=SECONDLY')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'INTERVAL=2')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;INTERVAL=-1')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;INTERVAL=1001')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;INTERVAL=99999999999999999999')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;INTERVAL=1.5')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => ';FREQ=DAILY')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;;INTERVAL=2')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;FREQ=HOURLY')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY,INTERVAL=2')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;COUNT=3')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=WEEKLY;BYDAY=MO')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;COLOR=RED')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'RRULE:FREQ=DAILY')$$,
    $$asyncjobs.enqueue('bi_ext', recurrence => 'FREQ=DAILY;INTERVAL=1' || repeat(' ', 300))$$
]) AS call;

-- enqueue_sql(command, data, <the options of enqueue>): a command that
-- does not parse is refused here, with the parser's SQLSTATE
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.enqueue_sql(NULL)$$,
    $$asyncjobs.enqueue_sql('')$$,
    $$asyncjobs.enqueue_sql('   ')$$,
    $$asyncjobs.enqueue_sql(' ; ; ')$$,
    $$asyncjobs.enqueue_sql('-- only a comment')$$,
    $$asyncjobs.enqueue_sql('SELEC 1')$$,
    $$asyncjobs.enqueue_sql('SELECT 1 FROM WHERE')$$,
    $$asyncjobs.enqueue_sql('SELECT (1')$$,
    $$asyncjobs.enqueue_sql('SELECT 1; SELEC 2')$$,
    $$asyncjobs.enqueue_sql('SELECT ''unterminated')$$,
    $$asyncjobs.enqueue_sql('SELECT $x$unterminated')$$,
    $$asyncjobs.enqueue_sql('SELECT 1 /* unterminated')$$,
    $$asyncjobs.enqueue_sql('SELECT "unterminated')$$,
    $$asyncjobs.enqueue_sql('SELECT U&''\zzzz''')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', '[1, 2]')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', '"text"')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', 'null')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', '42')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', pg_temp.sized(2 * 1024 * 1024))$$,
    $$asyncjobs.enqueue_sql('SELECT ' || quote_literal(repeat('x', 2 * 1024 * 1024)))$$,
    $$asyncjobs.enqueue_sql('SELECT 1', postpone_until => 'infinity')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', dependency_token => '')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', dedupe_key => '')$$,
    $$asyncjobs.enqueue_sql('SELECT 1', max_retries => -1)$$,
    $$asyncjobs.enqueue_sql('SELECT 1', recurrence => 'FREQ=HOURLY;INTERVAL=0')$$
]) AS call;

-- wait(job, timeout)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.wait(NULL)$$,
    $$asyncjobs.wait({done}, NULL)$$,
    $$asyncjobs.wait(-1)$$,
    $$asyncjobs.wait(0)$$,
    $$asyncjobs.wait(9223372036854775807)$$,
    $$asyncjobs.wait(-9223372036854775808)$$,
    $$asyncjobs.wait({done}, '-1 second')$$,
    $$asyncjobs.wait({done}, '1 day -25 hours')$$,
    $$asyncjobs.wait({done}, 'later')$$
]) AS call;

-- current_job() takes nothing: outside a job it is NULL
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.current_job()$$
]) AS call;

-- cancel, pause, resume, retry (job)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.cancel(NULL)$$,
    $$asyncjobs.cancel(-1)$$,
    $$asyncjobs.cancel(0)$$,
    $$asyncjobs.cancel(9223372036854775807)$$,
    $$asyncjobs.cancel('one')$$,
    $$asyncjobs.pause(NULL)$$,
    $$asyncjobs.pause(-1)$$,
    $$asyncjobs.pause(9223372036854775807)$$,
    $$asyncjobs.resume(NULL)$$,
    $$asyncjobs.resume(-1)$$,
    $$asyncjobs.resume(9223372036854775807)$$,
    $$asyncjobs.retry(NULL)$$,
    $$asyncjobs.retry(-1)$$,
    $$asyncjobs.retry(9223372036854775807)$$,
    $$asyncjobs.retry({ready})$$,
    $$asyncjobs.retry({held})$$,
    $$asyncjobs.retry({done})$$,
    -- accepted, and change nothing: a completed job never changes,
    -- only a paused job resumes
    $$asyncjobs.cancel({done})$$,
    $$asyncjobs.pause({done})$$,
    $$asyncjobs.resume({done})$$,
    $$asyncjobs.resume({ready})$$
]) AS call;

-- postpone(job, until)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.postpone(NULL, now())$$,
    $$asyncjobs.postpone({ready}, NULL)$$,
    $$asyncjobs.postpone(NULL, NULL)$$,
    $$asyncjobs.postpone(-1, now())$$,
    $$asyncjobs.postpone(9223372036854775807, now())$$,
    $$asyncjobs.postpone({ready}, 'infinity')$$,
    $$asyncjobs.postpone({ready}, '-infinity')$$,
    $$asyncjobs.postpone({ready}, 'whenever')$$,
    $$asyncjobs.postpone({held}, now() + interval '1 hour')$$,
    -- accepted, changes nothing: a completed job
    $$asyncjobs.postpone({done}, now() + interval '1 hour')$$
]) AS call;

-- pause_operation(name), resume_operation(name)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.pause_operation(NULL)$$,
    $$asyncjobs.pause_operation('')$$,
    $$asyncjobs.pause_operation('bi_no_such_operation')$$,
    $$asyncjobs.resume_operation(NULL)$$,
    $$asyncjobs.resume_operation('')$$,
    $$asyncjobs.resume_operation('bi_no_such_operation')$$
]) AS call;

-- claim(operations, max_jobs, lease, worker)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.claim(NULL)$$,
    $$asyncjobs.claim('{}')$$,
    $$asyncjobs.claim(ARRAY[NULL])$$,
    $$asyncjobs.claim(ARRAY['bi_ext', NULL])$$,
    $$asyncjobs.claim(ARRAY[''])$$,
    $$asyncjobs.claim(ARRAY['bi_ext', 'bi_no_such_operation'])$$,
    $$asyncjobs.claim(ARRAY['sql'])$$,
    $$asyncjobs.claim(ARRAY['bulk_delete'])$$,
    $$asyncjobs.claim(ARRAY['bi_handled'])$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], NULL)$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], 0)$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], -1)$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], 1001)$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], 2147483647)$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], lease => NULL)$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], lease => '0')$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], lease => '-1 minute')$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], lease => '1 day 1 second')$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], lease => '1000000 years')$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], worker => '')$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], worker => '   ')$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], worker => E'\t\n')$$,
    $$asyncjobs.claim(ARRAY['bi_ext'], worker => repeat('w', 257))$$
]) AS call;

-- complete(job, token, result)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.complete(NULL, '{token}')$$,
    $$asyncjobs.complete({held}, NULL)$$,
    $$asyncjobs.complete(-1, '{token}')$$,
    $$asyncjobs.complete(9223372036854775807, '{token}')$$,
    $$asyncjobs.complete({held}, 'not-a-uuid')$$,
    $$asyncjobs.complete({held}, gen_random_uuid())$$,
    $$asyncjobs.complete({ready}, '{token}')$$,
    $$asyncjobs.complete({done}, '{done_token}')$$,
    $$asyncjobs.complete({held}, '{token}', '{not json')$$,
    $$asyncjobs.complete({held}, '{token}', pg_temp.sized(2 * 1024 * 1024))$$
]) AS call;

-- fail(job, token, message, transient)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.fail(NULL, '{token}', 'x')$$,
    $$asyncjobs.fail({held}, NULL, 'x')$$,
    $$asyncjobs.fail({held}, '{token}', NULL)$$,
    $$asyncjobs.fail({held}, '{token}', '')$$,
    $$asyncjobs.fail({held}, '{token}', E' \t\r\n')$$,
    $$asyncjobs.fail({held}, '{token}', 'x', NULL)$$,
    $$asyncjobs.fail(-1, '{token}', 'x')$$,
    $$asyncjobs.fail({held}, gen_random_uuid(), 'x')$$,
    $$asyncjobs.fail({ready}, '{token}', 'x')$$,
    $$asyncjobs.fail({done}, '{done_token}', 'x')$$
]) AS call;

-- heartbeat(job, token, lease)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.heartbeat(NULL, '{token}')$$,
    $$asyncjobs.heartbeat({held}, NULL)$$,
    $$asyncjobs.heartbeat({held}, '{token}', NULL)$$,
    $$asyncjobs.heartbeat({held}, '{token}', '0')$$,
    $$asyncjobs.heartbeat({held}, '{token}', '-1 minute')$$,
    $$asyncjobs.heartbeat({held}, '{token}', '1 day 1 second')$$,
    $$asyncjobs.heartbeat({held}, '{token}', '1000000 years')$$,
    $$asyncjobs.heartbeat(-1, '{token}')$$,
    $$asyncjobs.heartbeat({held}, gen_random_uuid())$$,
    $$asyncjobs.heartbeat({ready}, '{token}')$$,
    $$asyncjobs.heartbeat({done}, '{done_token}')$$
]) AS call;

-- register_step(target, event, operation), unregister_step(...)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.register_step(NULL, 'INSERT', 'bi_handled')$$,
    $$asyncjobs.register_step('bi_table', NULL, 'bi_handled')$$,
    $$asyncjobs.register_step('bi_table', 'INSERT', NULL)$$,
    $$asyncjobs.register_step('bi_table', '', 'bi_handled')$$,
    $$asyncjobs.register_step('bi_table', 'TRUNCATE', 'bi_handled')$$,
    $$asyncjobs.register_step('bi_table', 'insert ', 'bi_handled')$$,
    $$asyncjobs.register_step('bi_table', 'INSERT', '')$$,
    $$asyncjobs.register_step('bi_table', 'INSERT', 'bi_no_such_operation')$$,
    $$asyncjobs.register_step('bi_table', 'INSERT', 'sql')$$,
    $$asyncjobs.register_step('bi_table', 'INSERT', 'bulk_delete')$$,
    $$asyncjobs.register_step('bi_no_such_table', 'INSERT', 'bi_handled')$$,
    $$asyncjobs.register_step(0, 'INSERT', 'bi_handled')$$,
    $$asyncjobs.register_step(4294967295, 'INSERT', 'bi_handled')$$,
    $$asyncjobs.register_step('bi_view', 'INSERT', 'bi_handled')$$,
    $$asyncjobs.register_step('bi_seq', 'INSERT', 'bi_handled')$$,
    $$asyncjobs.register_step('bi_temp', 'INSERT', 'bi_handled')$$,
    $$asyncjobs.register_step('asyncjobs.job', 'INSERT', 'bi_handled')$$,
    $$asyncjobs.unregister_step(NULL, 'INSERT', 'bi_handled')$$,
    $$asyncjobs.unregister_step('bi_table', NULL, 'bi_handled')$$,
    $$asyncjobs.unregister_step('bi_table', 'INSERT', NULL)$$,
    $$asyncjobs.unregister_step('bi_table', '', 'bi_handled')$$,
    $$asyncjobs.unregister_step('bi_table', 'MERGE', 'bi_handled')$$,
    $$asyncjobs.unregister_step('bi_table', 'INSERT', 'bi_handled')$$,
    $$asyncjobs.unregister_step('bi_table', 'INSERT', 'bi_no_such_operation')$$,
    $$asyncjobs.unregister_step(0, 'INSERT', 'bi_handled')$$,
    $$asyncjobs.unregister_step('bi_view', 'INSERT', 'bi_handled')$$
]) AS call;

-- trace(message): outside a job it does nothing, whatever the message
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.trace(NULL)$$,
    $$asyncjobs.trace('')$$,
    $$asyncjobs.trace(repeat('x', 2 * 1024 * 1024))$$
]) AS call;

-- cleanup(succeeded, failed, canceled)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.cleanup('0')$$,
    $$asyncjobs.cleanup('-1 day')$$,
    $$asyncjobs.cleanup(failed => '0 days')$$,
    $$asyncjobs.cleanup(failed => '-1 second')$$,
    $$asyncjobs.cleanup(canceled => '1 day -25 hours')$$,
    $$asyncjobs.cleanup(canceled => '-1 mon 40 days')$$,
    $$asyncjobs.cleanup('a while')$$,
    -- accepted, changes nothing: a retention longer than the calendar
    -- keeps every row
    $$asyncjobs.cleanup('1000000 years', '1000000 years', '1000000 years')$$
]) AS call;

-- schedule_cleanup(schedule): the regress instance has no pg_cron
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.schedule_cleanup(NULL)$$,
    $$asyncjobs.schedule_cleanup('')$$,
    $$asyncjobs.schedule_cleanup('   ')$$,
    $$asyncjobs.schedule_cleanup('every day')$$,
    $$asyncjobs.schedule_cleanup()$$
]) AS call;

-- bulk_delete(target, condition, name, batch_size, start_at, recurrence,
--             window_start, window_end)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.bulk_delete(NULL, 'true')$$,
    $$asyncjobs.bulk_delete('bi_table', NULL)$$,
    $$asyncjobs.bulk_delete('bi_table', '')$$,
    $$asyncjobs.bulk_delete('bi_table', E' \t\n')$$,
    $$asyncjobs.bulk_delete('bi_table', 'id >')$$,
    $$asyncjobs.bulk_delete('bi_table', 'id > 0; DELETE FROM bi_table')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true) UNION (SELECT 1 WHERE true')$$,
    $$asyncjobs.bulk_delete('bi_table', 'id > 0 /*')$$,
    $$asyncjobs.bulk_delete('bi_table', 'id = ''unterminated')$$,
    $$asyncjobs.bulk_delete('bi_table', 'note = ' || quote_literal(repeat('x', 2 * 1024 * 1024)))$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', batch_size => NULL)$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', batch_size => 0)$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', batch_size => -1)$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', batch_size => 100001)$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', batch_size => 2147483647)$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', start_at => 'infinity')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', start_at => '-infinity')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', recurrence => '')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', recurrence => 'FREQ=SOMETIMES')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', window_start => '01:00')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', window_end => '01:00')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', window_start => '01:00', window_end => '01:00')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', window_start => '24:00', window_end => '00:00')$$,
    $$asyncjobs.bulk_delete('bi_table', 'true', window_start => '25:00', window_end => '01:00')$$,
    $$asyncjobs.bulk_delete('bi_no_such_table', 'true')$$,
    $$asyncjobs.bulk_delete(0, 'true')$$,
    $$asyncjobs.bulk_delete(4294967295, 'true')$$,
    $$asyncjobs.bulk_delete('bi_view', 'true')$$,
    $$asyncjobs.bulk_delete('bi_seq', 'true')$$,
    $$asyncjobs.bulk_delete('bi_nokey', 'true')$$,
    $$asyncjobs.bulk_delete('bi_temp', 'true')$$,
    $$asyncjobs.bulk_delete('asyncjobs.job', 'false')$$,
    $$asyncjobs.bulk_delete('asyncjobs.operation_type', 'false')$$
]) AS call;

-- maintain_partitions(days_ahead)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.maintain_partitions(NULL)$$,
    $$asyncjobs.maintain_partitions(-1)$$,
    $$asyncjobs.maintain_partitions(367)$$,
    $$asyncjobs.maintain_partitions(2147483647)$$,
    $$asyncjobs.maintain_partitions(-2147483648)$$
]) AS call;

-- _step_fired(job): internal, but executable by every role (the step
-- trigger calls it as the writing role)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs._step_fired(NULL)$$,
    $$asyncjobs._step_fired(-1)$$,
    $$asyncjobs._step_fired({done})$$
]) AS call;

-- _claim_locked(n, operations, external, after_ops, after_priority,
-- after_runafter, after_id, fused): internal (asyncjobs._claim runs it)
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$(SELECT count(*) FROM asyncjobs._claim_locked(NULL, NULL, false, NULL, NULL, NULL, NULL, true))$$,
    $$(SELECT count(*) FROM asyncjobs._claim_locked(1, NULL, NULL, NULL, NULL, NULL, NULL, true))$$,
    $$(SELECT count(*) FROM asyncjobs._claim_locked(1, NULL, false, NULL, NULL, NULL, NULL, NULL))$$,
    $$(SELECT count(*) FROM asyncjobs._claim_locked(-1, NULL, false, NULL, NULL, NULL, NULL, true))$$
]) AS call;

--------------------------------------------------------------------------
-- Oversized payloads: asyncjobs.max_payload_size (default 1024 kB)
--------------------------------------------------------------------------

SHOW asyncjobs.max_payload_size;
-- the whole error, at the default
\set SHOW_CONTEXT never
SELECT asyncjobs.enqueue('bi_ext', pg_temp.sized(2 * 1024 * 1024));
SELECT asyncjobs.complete(:held, :'token', pg_temp.sized(2 * 1024 * 1024));
\set SHOW_CONTEXT errors
-- with a small limit
SET asyncjobs.max_payload_size = '1kB';
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$asyncjobs.enqueue('bi_ext', pg_temp.sized(1025))$$,
    $$asyncjobs.enqueue('bi_ext', jsonb_build_array(repeat('x', 1024)))$$,
    $$asyncjobs.enqueue_sql('SELECT ' || quote_literal(repeat('x', 1024)))$$,
    $$asyncjobs.enqueue_sql('SELECT 1', pg_temp.sized(1025))$$,
    $$asyncjobs.bulk_delete('bi_table', 'note = ' || quote_literal(repeat('x', 1024)))$$,
    $$asyncjobs.complete({held}, '{token}', pg_temp.sized(1025))$$,
    $$asyncjobs.complete({held}, '{token}', to_jsonb(repeat('x', 1024)))$$
]) AS call;
RESET asyncjobs.max_payload_size;
-- the setting itself
SELECT call, pg_temp.try(call) AS outcome FROM unnest(ARRAY[
    $$set_config('asyncjobs.max_payload_size', '0', true)$$,
    $$set_config('asyncjobs.max_payload_size', '-1', true)$$,
    $$set_config('asyncjobs.max_payload_size', '3000 GB', true)$$,
    $$set_config('asyncjobs.max_payload_size', 'lots', true)$$
]) AS call;
SHOW asyncjobs.max_payload_size;

--------------------------------------------------------------------------
-- Nothing above changed anything
--------------------------------------------------------------------------

SELECT b.tbl, a.n - b.n AS new_rows, a.hash IS NOT DISTINCT FROM b.hash AS unchanged
  FROM bi_before b JOIN pg_temp.fingerprint() a USING (tbl)
 ORDER BY b.tbl;
SELECT f.name, a.statecode, a.statuscode
  FROM bi_fixture f JOIN asyncjobs.asyncoperation a ON a.asyncoperationid::text = f.value
 ORDER BY a.asyncoperationid;

-- and the fingerprint does see a change (here, one rolled back)
BEGIN;
SELECT asyncjobs.postpone(:ready, now() + interval '1 day');
SELECT b.tbl, a.n - b.n AS new_rows, a.hash IS NOT DISTINCT FROM b.hash AS unchanged
  FROM bi_before b JOIN pg_temp.fingerprint() a USING (tbl)
 WHERE a.hash IS DISTINCT FROM b.hash;
ROLLBACK;

--------------------------------------------------------------------------
-- Accepted on purpose: a NULL option means its default; a payload at the
-- limit fits (all rolled back)
--------------------------------------------------------------------------

BEGIN;
SELECT asyncjobs.enqueue('bi_ext', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) AS j \gset
SELECT name, data, priority, postponeuntil, dependencytoken, dedupekey, maxretries,
       recurrencepattern, regardingobjectid, statuscode
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j;
SELECT asyncjobs.enqueue_sql('SELECT 1', NULL) AS j \gset
SELECT name, data FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j;
SET LOCAL asyncjobs.max_payload_size = '1kB';
SELECT asyncjobs.enqueue('bi_ext', pg_temp.sized(1024)) IS NOT NULL AS fits;
ROLLBACK;

--------------------------------------------------------------------------
-- Bad input that only running can find: the job is enqueued, and Failed
-- with the error (not part of the fingerprint above)
--------------------------------------------------------------------------

-- SQL that parses but fails: the error of the statement
CREATE TEMP TABLE bi_runs (job bigint);
INSERT INTO bi_runs
SELECT asyncjobs.enqueue_sql(c, name => 'bi run', max_retries => 0)
  FROM unnest(ARRAY[
    'SELECT * FROM bi_no_such_table',
    'SELECT bi_no_such_column FROM bi_table',
    'SELECT bi_no_such_function()',
    'SELECT 1/0',
    'INSERT INTO bi_table VALUES (1, ''one''); INSERT INTO bi_table VALUES (1, ''again'')',
    'VACUUM bi_table',
    'COMMIT']) c;
SELECT bool_and(asyncjobs.wait(job, '30 seconds') = 31) AS all_failed FROM bi_runs;
SELECT a.data->>'command' AS command, a.statuscode, a.errorcode, a.friendlymessage
  FROM bi_runs r JOIN asyncjobs.asyncoperation a ON a.asyncoperationid = r.job
 ORDER BY a.asyncoperationid;
-- nothing of a failed command remains
SELECT count(*) AS rows_left FROM bi_table;

-- a bulk delete condition that parses but names no column of the table
SELECT asyncjobs.bulk_delete('bi_table', 'bi_no_such_column = 1', name => 'bi run') AS j \gset
SELECT asyncjobs.wait(:j, '30 seconds');
SELECT statuscode, errorcode, friendlymessage FROM asyncjobs.asyncoperation
 WHERE asyncoperationid = :j;

-- a handler whose result is over the limit (the workers' limit: the
-- server's setting)
CREATE FUNCTION bi_big_result(data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('x', repeat('x', 2 * 1024 * 1024)) $$;
SELECT asyncjobs.register_operation('bi_big_result', 'bi_big_result(jsonb)', max_retries => 0);
SELECT asyncjobs.enqueue('bi_big_result', name => 'bi run') AS j \gset
SELECT asyncjobs.wait(:j, '30 seconds');
SELECT statuscode, errorcode, friendlymessage, result FROM asyncjobs.asyncoperation
 WHERE asyncoperationid = :j;

-- trace() inside a job: a NULL line is skipped, an empty one kept, and a
-- huge one is cut: the attempt keeps its newest 10 kB
CREATE FUNCTION bi_tracer(data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM asyncjobs.trace('first line');
    PERFORM asyncjobs.trace(NULL);
    PERFORM asyncjobs.trace('');
    PERFORM asyncjobs.trace('last line');
    IF (data->>'huge')::boolean THEN
        PERFORM asyncjobs.trace(repeat('y', 1024 * 1024));
    END IF;
    RAISE EXCEPTION 'traced, then failed';
END
$$;
SELECT asyncjobs.register_operation('bi_tracer', 'bi_tracer(jsonb)', max_retries => 0);
SELECT asyncjobs.enqueue('bi_tracer', '{"huge": false}', name => 'bi run') AS j1 \gset
SELECT asyncjobs.enqueue('bi_tracer', '{"huge": true}', name => 'bi run') AS j2 \gset
SELECT asyncjobs.wait(:j1, '30 seconds'), asyncjobs.wait(:j2, '30 seconds');
SELECT messageblock, split_part(exceptiondetails, E'\n', 1) AS error
  FROM asyncjobs.plugintracelog WHERE asyncoperationid = :j1;
SELECT length(messageblock), split_part(messageblock, E'\n', 1) AS first_line,
       length(split_part(messageblock, E'\n', 2)) AS kept_of_huge_line,
       split_part(exceptiondetails, E'\n', 1) AS error
  FROM asyncjobs.plugintracelog WHERE asyncoperationid = :j2;

--------------------------------------------------------------------------
-- Tidy up for the tests after this one
--------------------------------------------------------------------------

DELETE FROM asyncjobs.plugintracelog
 WHERE asyncoperationid IN (SELECT asyncoperationid FROM asyncjobs.asyncoperation
                             WHERE name LIKE 'bi %' OR messagename LIKE 'bi\_%');
DELETE FROM asyncjobs.bulkdelete_progress
 WHERE asyncoperationid IN (SELECT asyncoperationid FROM asyncjobs.asyncoperation
                             WHERE name LIKE 'bi %');
DELETE FROM asyncjobs.job WHERE name LIKE 'bi %' OR messagename LIKE 'bi\_%';
DELETE FROM asyncjobs.job_history WHERE name LIKE 'bi %' OR messagename LIKE 'bi\_%';
DELETE FROM asyncjobs.operation_type WHERE name LIKE 'bi\_%';
DROP VIEW bi_view;
DROP TABLE bi_table, bi_nokey, bi_temp;
DROP SEQUENCE bi_seq;
DROP FUNCTION bi_handler(jsonb), bi_two_args(jsonb, int), bi_set(jsonb),
    bi_big_result(jsonb), bi_tracer(jsonb);
DROP PROCEDURE bi_proc(jsonb);
