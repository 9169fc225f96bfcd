--
-- Bad input: every call below fails with a clear error and a proper
-- SQLSTATE, and changes nothing.
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

-- runs a statement, returns "ok" or "SQLSTATE: message"
CREATE FUNCTION pg_temp.try(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

CREATE FUNCTION good_handler(data jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT data';
CREATE FUNCTION two_args(a jsonb, b int) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION set_handler(data jsonb) RETURNS SETOF int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE proc_handler(data jsonb) LANGUAGE sql AS '';
SELECT asyncjobs.register_operation('good', 'good_handler(jsonb)');
SELECT asyncjobs.register_operation('external');

SELECT count(*) AS jobs_before FROM asyncjobs.asyncoperation \gset
SELECT md5(string_agg(t::text, ',' ORDER BY name)) AS types_before
  FROM asyncjobs.operation_type t \gset

-- register_operation
SELECT pg_temp.try($$SELECT asyncjobs.register_operation(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation(repeat('x', 64))$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', 'abs(int)')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', 'two_args(jsonb, int)')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', 'set_handler(jsonb)')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', 'proc_handler(jsonb)')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', 'no_such_function(jsonb)')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', max_retries => -1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', max_retries => NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', retry_delay => '0')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', retry_delay => '-1 second')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', retry_delay => '1 minute', retry_delay_max => '1 second')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', timeout => '-5 minutes')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', timeout => '100 years')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', timeout => 'forever')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('bad', max_concurrency => 0)$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('sql', 'good_handler(jsonb)')$$);

-- enqueue
SELECT pg_temp.try($$SELECT asyncjobs.enqueue(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('no_such_operation')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('good', '{not json')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('good', max_retries => -1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('good', postpone_until => 'infinity')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('good', dedupe_key => '')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('good', dependency_token => '')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('good', recurrence => 'FREQ=SOMETIMES')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('good', recurrence => '')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('sql', '{}')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('sql', '{"command": 42}')$$);

-- enqueue_sql
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_sql(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_sql('')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_sql('  ;  ')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_sql('SELEC 1')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_sql('SELECT 1', data => '[1, 2]')$$);

-- job control
SELECT pg_temp.try($$SELECT asyncjobs.cancel(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.cancel(-1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.pause(-1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.resume(-1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.postpone(-1, now())$$);
SELECT pg_temp.try($$SELECT asyncjobs.retry(-1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.pause_operation(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.pause_operation('no_such_operation')$$);
SELECT pg_temp.try($$SELECT asyncjobs.resume_operation('no_such_operation')$$);

-- wait
SELECT pg_temp.try($$SELECT asyncjobs.wait(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.wait(-1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.wait(1, NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.wait(1, '-1 second')$$);

-- nothing above changed anything
SELECT count(*) - :jobs_before AS new_jobs FROM asyncjobs.asyncoperation;
SELECT md5(string_agg(t::text, ',' ORDER BY name)) = :'types_before' AS types_unchanged
  FROM asyncjobs.operation_type t;

-- wait() in the transaction that enqueued the job, or in REPEATABLE READ
BEGIN;
SELECT regexp_replace(pg_temp.try($$SELECT asyncjobs.wait(asyncjobs.enqueue('external'))$$), '\d+ was', 'N was');
ROLLBACK;
SELECT asyncjobs.enqueue('external') AS ext \gset
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.try(format('SELECT asyncjobs.wait(%s)', :ext));
ROLLBACK;
-- a job nobody runs (no handler: for external workers) times out waiting
SELECT asyncjobs.wait(:ext, '0.1 seconds');

-- privileges
CREATE ROLE regress_aj_alice;
CREATE ROLE regress_aj_bob;
CREATE FUNCTION private_handler(data jsonb) RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION private_handler(jsonb) FROM PUBLIC;
SELECT asyncjobs.register_operation('private', 'private_handler(jsonb)');
SET ROLE regress_aj_alice;
SELECT asyncjobs.register_operation('alice_op');
-- tables are reached only through the API
SELECT pg_temp.try($$INSERT INTO asyncjobs.job (name, operationtype, messagename, ownerid, maxretries, correlationid) VALUES ('x', 54, 'sql', 'postgres', 0, gen_random_uuid())$$);
SELECT pg_temp.try($$UPDATE asyncjobs.operation_type SET handler = NULL$$);
SELECT pg_temp.try($$DELETE FROM asyncjobs.job_history$$);
-- a handler alice may not execute
SELECT pg_temp.try($$SELECT asyncjobs.enqueue('private')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('mine', 'private_handler(jsonb)')$$);
-- built-ins belong to superusers
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('sql', max_retries => 9)$$);
-- the internal functions are not for users
SELECT pg_temp.try($$SELECT asyncjobs._claim(1, 'x', 1)$$);
SELECT pg_temp.try($$SELECT asyncjobs._claim_locked(1, NULL, false, NULL, NULL, NULL, NULL, true)$$);
SELECT pg_temp.try($$SELECT asyncjobs._requeue_orphans()$$);
SET ROLE regress_aj_bob;
-- bob may not change alice's operation
SELECT pg_temp.try($$SELECT asyncjobs.register_operation('alice_op', 'good_handler(jsonb)')$$);
RESET ROLE;
SELECT name, handler, owner FROM asyncjobs.operation_type WHERE name = 'alice_op';

DROP OWNED BY regress_aj_alice, regress_aj_bob;
DELETE FROM asyncjobs.operation_type WHERE name = 'alice_op';
DROP ROLE regress_aj_alice, regress_aj_bob;
