--
-- No escalation: what a role tries, through its jobs or through the API,
-- to act as another role or as the superuser the workers connect as.
-- Each attempt must fail, and nothing may run with more privileges than
-- the role that asked.
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

CREATE FUNCTION pg_temp.try(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '\d+', 'N', 'g');
END
$$;

CREATE ROLE regress_esc_mallory;
CREATE ROLE regress_esc_victim;
CREATE SCHEMA regress_esc AUTHORIZATION regress_esc_mallory;
GRANT USAGE ON SCHEMA regress_esc TO PUBLIC;

-- who ran what: any role may write here, so a trap can tell on its caller
CREATE TABLE regress_esc_log (who text, what text);
GRANT INSERT, SELECT ON regress_esc_log TO PUBLIC;

-- the victim has a job the attacker would like to see or steal
SET ROLE regress_esc_victim;
SELECT asyncjobs.register_operation('esc_victim');
SELECT asyncjobs.enqueue('esc_victim', '{"secret": "victim"}') AS victim_job \gset
RESET ROLE;

--------------------------------------------------------------------------
-- 1. Every API function pins search_path or is C; every SECURITY DEFINER
--    function pins it; PUBLIC may call exactly the API and nothing inside.
--------------------------------------------------------------------------

-- functions in SQL or PL/pgSQL without a pinned search_path (none)
SELECT p.oid::regprocedure AS unpinned
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'asyncjobs'::regnamespace
   AND l.lanname IN ('sql', 'plpgsql')
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c
                    WHERE c LIKE 'search\_path=pg\_catalog, pg\_temp')
 ORDER BY 1;

-- SECURITY DEFINER functions, each with its settings
SELECT p.oid::regprocedure AS security_definer, p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace = 'asyncjobs'::regnamespace AND p.prosecdef
 ORDER BY p.oid::regprocedure::text COLLATE "C";

-- what PUBLIC may execute: the API, and the few helpers the views and
-- policies call (none of them writes anything)
SELECT p.oid::regprocedure AS public_may_execute
  FROM pg_proc p
 WHERE p.pronamespace = 'asyncjobs'::regnamespace
   AND has_function_privilege('regress_esc_mallory', p.oid, 'EXECUTE')
 ORDER BY p.oid::regprocedure::text COLLATE "C";

-- and no table or sequence but those behind the views
SELECT c.oid::regclass AS public_may_read,
       has_table_privilege('regress_esc_mallory', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS may_write
  FROM pg_class c
 WHERE c.relnamespace = 'asyncjobs'::regnamespace
   AND c.relkind IN ('r', 'p', 'v', 'S')
   AND has_table_privilege('regress_esc_mallory', c.oid, 'SELECT')
 ORDER BY c.relname COLLATE "C";

--------------------------------------------------------------------------
-- 2. Internal functions and tables, called directly
--------------------------------------------------------------------------
SET ROLE regress_esc_mallory;
SELECT pg_temp.try('SELECT * FROM asyncjobs._claim_impl(''regress_esc_victim'', ARRAY[''esc_victim''], 1, ''1 minute'', NULL)');
SELECT pg_temp.try(format('SELECT asyncjobs._cancel_impl(''regress_esc_victim'', %s)', :victim_job));
SELECT pg_temp.try('SELECT * FROM asyncjobs._claim(1, ''h'', 10)');
SELECT pg_temp.try(format('UPDATE asyncjobs.job SET ownerid = ''regress_esc_mallory'' WHERE asyncoperationid = %s', :victim_job));
SELECT pg_temp.try('INSERT INTO asyncjobs.job (name, operationtype, messagename, ownerid, maxretries, correlationid) VALUES (''x'', 1, ''esc_victim'', ''regress_esc_victim'', 0, gen_random_uuid())');
-- the victim's job is out of sight, and out of reach
SELECT count(*) AS mallory_sees_victim_jobs FROM asyncjobs.asyncoperation
 WHERE ownerid = 'regress_esc_victim'::regrole;
SELECT pg_temp.try(format('SELECT asyncjobs.cancel(%s)', :victim_job));
SELECT pg_temp.try(format('SELECT asyncjobs.wait(%s, ''1 second'')', :victim_job));
RESET ROLE;

--------------------------------------------------------------------------
-- 3. Jobs that reach for more privileges fail, as their owner
--------------------------------------------------------------------------
CREATE TEMP TABLE attempts (what text, job bigint);
GRANT INSERT ON attempts TO regress_esc_mallory;
SET ROLE regress_esc_mallory;
INSERT INTO attempts VALUES
  ('alter system',     asyncjobs.enqueue_sql('ALTER SYSTEM SET work_mem = ''1GB''', max_retries => 0)),
  ('alter role',       asyncjobs.enqueue_sql('ALTER ROLE regress_esc_mallory SUPERUSER', max_retries => 0)),
  ('grant admin',      asyncjobs.enqueue_sql('GRANT asyncjobs_admin TO regress_esc_mallory', max_retries => 0)),
  ('copy to program',  asyncjobs.enqueue_sql('COPY (SELECT 1) TO PROGRAM ''true''', max_retries => 0)),
  ('reload conf',      asyncjobs.enqueue_sql('SELECT pg_reload_conf()', max_retries => 0)),
  ('read server file', asyncjobs.enqueue_sql('SELECT pg_read_file(''postgresql.conf'')', max_retries => 0)),
  ('set role',         asyncjobs.enqueue_sql('SET ROLE regress_esc_victim', max_retries => 0)),
  ('set_config role',  asyncjobs.enqueue_sql('SELECT set_config(''role'', ''regress_esc_victim'', false)', max_retries => 0)),
  ('session auth',     asyncjobs.enqueue_sql('SET SESSION AUTHORIZATION DEFAULT', max_retries => 0)),
  ('reset role',       asyncjobs.enqueue_sql('RESET ROLE; INSERT INTO regress_esc_log VALUES (current_user, ''reset role'')', max_retries => 0)),
  ('write job table',  asyncjobs.enqueue_sql('UPDATE asyncjobs.job SET ownerid = ''regress_esc_mallory''', max_retries => 0)),
  ('read victim jobs', asyncjobs.enqueue_sql('INSERT INTO regress_esc_log SELECT current_user, ''saw '' || count(*) FROM asyncjobs.job_history WHERE ownerid = ''regress_esc_victim''::regrole', max_retries => 0));
RESET ROLE;

SELECT a.what, asyncjobs.wait(a.job, '60 seconds') AS statuscode
  FROM attempts a ORDER BY a.job;
SELECT a.what, j.errorcode, regexp_replace(j.friendlymessage, '\d+', 'N', 'g') AS friendlymessage
  FROM attempts a JOIN asyncjobs.asyncoperation j ON j.asyncoperationid = a.job
 ORDER BY a.job;

-- the same from a handler, and from a job owned by a superuser: ALTER
-- SYSTEM never runs inside a job (a job is a transaction block)
CREATE FUNCTION regress_esc_alter_system(data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'ALTER SYSTEM SET work_mem = ''1GB''';
END
$$;
SELECT asyncjobs.register_operation('esc_alter_system', 'regress_esc_alter_system(jsonb)', max_retries => 0);
SELECT asyncjobs.enqueue('esc_alter_system') AS su_job \gset
SELECT asyncjobs.wait(:su_job, '60 seconds') AS superuser_job_status;
SELECT errorcode, friendlymessage FROM asyncjobs.asyncoperation WHERE asyncoperationid = :su_job;
SELECT position('work_mem' IN pg_read_file('postgresql.auto.conf')) AS work_mem_in_auto_conf;

-- nothing was logged as anyone but the job's owner; mallory's role is
-- unchanged; no job changed hands
SELECT who, what FROM regress_esc_log ORDER BY 1, 2;
SELECT rolsuper, pg_has_role('regress_esc_mallory', 'asyncjobs_admin', 'MEMBER') AS admin
  FROM pg_roles WHERE rolname = 'regress_esc_mallory';
SELECT ownerid FROM asyncjobs.asyncoperation WHERE asyncoperationid = :victim_job;
TRUNCATE regress_esc_log;

--------------------------------------------------------------------------
-- 4. A search_path trick against the API: mallory's own "=" operators,
--    in a schema listed before pg_catalog, must not be called by the API
--    functions (which act as the extension's owner) -- nor may any other
--    function of hers.  Each trap logs the role it ran as.
--------------------------------------------------------------------------
SET ROLE regress_esc_mallory;
CREATE FUNCTION regress_esc.texteq(text, text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.regress_esc_log VALUES (current_user, 'text =');
    RETURN pg_catalog.texteq($1, $2);
END
$$;
CREATE OPERATOR regress_esc.= (LEFTARG = text, RIGHTARG = text,
                               FUNCTION = regress_esc.texteq);
CREATE FUNCTION regress_esc.int8eq(bigint, bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.regress_esc_log VALUES (current_user, 'bigint =');
    RETURN pg_catalog.int8eq($1, $2);
END
$$;
CREATE OPERATOR regress_esc.= (LEFTARG = bigint, RIGHTARG = bigint,
                               FUNCTION = regress_esc.int8eq);
CREATE FUNCTION regress_esc.now() RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.regress_esc_log VALUES (current_user, 'now()');
    RETURN pg_catalog.now();
END
$$;

SET search_path = regress_esc, pg_catalog, public;
-- the traps work: mallory's own query calls them
SELECT 'a'::text = 'a'::text AS trap_works;
SELECT asyncjobs.register_operation('esc_trap');
SELECT asyncjobs.enqueue('esc_trap', '{"k": 1}', dedupe_key => 'k1') AS t1 \gset
SELECT asyncjobs.enqueue('esc_trap', '{"k": 1}', dedupe_key => 'k1') = :t1 AS deduped;
SELECT asyncjobs.enqueue('esc_trap', dependency_token => 'tok') AS t2 \gset
SELECT asyncjobs.enqueue('esc_trap', postpone_until => pg_catalog.now() + interval '1 hour') AS t3 \gset
SELECT asyncjobs.enqueue_sql('SELECT 1', max_retries => 0) AS t4 \gset
SELECT asyncjobs.pause(:t1);
SELECT asyncjobs.resume(:t1);
SELECT asyncjobs.postpone(:t2, pg_catalog.now() + interval '1 day');
SELECT asyncjobs.cancel(:t3);
SELECT asyncjobs.pause_operation('esc_trap');
SELECT asyncjobs.resume_operation('esc_trap');
SELECT pg_temp.try(format('SELECT asyncjobs.cancel(%s)', :victim_job));
SELECT asyncjobs.wait(:t4, '60 seconds');
SELECT asyncjobs.retry(:t3) AS t5 \gset
SELECT count(*) AS claimed FROM asyncjobs.claim(ARRAY['esc_trap'], 10);
SELECT asyncjobs.cancel(:t1);
SELECT asyncjobs.cancel(:t2);
SELECT asyncjobs.cancel(:t5);
RESET search_path;
RESET ROLE;

-- only mallory's own query ran her operators; nothing as the owner
SELECT who, what, count(*) FROM regress_esc_log GROUP BY 1, 2 ORDER BY 1, 2;

DROP FUNCTION regress_esc_alter_system(jsonb);
DELETE FROM asyncjobs.operation_type WHERE name LIKE 'esc\_%';
DROP TABLE regress_esc_log, attempts;
DROP SCHEMA regress_esc CASCADE;
DROP ROLE regress_esc_mallory, regress_esc_victim;
