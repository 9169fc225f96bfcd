--
-- Who sees and manages which jobs: row-level security on the job tables
-- (the views read them as the querying role), asyncjobs_admin.
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

SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = 'asyncjobs_admin';
SELECT relname, relrowsecurity FROM pg_class
 WHERE relnamespace = 'asyncjobs'::regnamespace
   AND relname IN ('job', 'job_history', 'plugintracelog', 'bulkdelete_progress', 'bulkdeletefailure')
 ORDER BY relname;

CREATE ROLE regress_sec_alice;
CREATE ROLE regress_sec_bob;
CREATE ROLE regress_sec_boss IN ROLE asyncjobs_admin;
CREATE ROLE regress_sec_team IN ROLE regress_sec_alice;   -- has alice's privileges
GRANT USAGE, CREATE ON SCHEMA public TO regress_sec_alice;

CREATE FUNCTION sec_fail(data jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM asyncjobs.trace('alice''s secret line');
    RAISE EXCEPTION 'alice''s job failed' USING ERRCODE = 'data_exception';
END
$$;

SELECT count(*) AS all_jobs FROM asyncjobs.asyncoperation \gset

SET ROLE regress_sec_alice;
SELECT asyncjobs.register_operation('sec_held');
SELECT asyncjobs.register_operation('sec_fail', 'sec_fail(jsonb)', max_retries => 0);
SELECT asyncjobs.enqueue('sec_held', '{"secret": "alice"}') AS a1 \gset
SELECT asyncjobs.enqueue('sec_fail') AS a2 \gset
SELECT asyncjobs.wait(:a2);
SET ROLE regress_sec_bob;
SELECT asyncjobs.register_operation('sec_bob');
SELECT asyncjobs.enqueue('sec_bob') AS b1 \gset
RESET ROLE;

-- each role sees its own jobs, through the view and the tables
SET ROLE regress_sec_alice;
SELECT count(*) AS alice_sees FROM asyncjobs.asyncoperation;
SELECT count(*) AS alice_active FROM asyncjobs.job;
SELECT count(*) AS alice_history FROM asyncjobs.job_history;
SELECT count(*) AS alice_traces FROM asyncjobs.plugintracelog;
SET ROLE regress_sec_bob;
SELECT count(*) AS bob_sees FROM asyncjobs.asyncoperation;
SELECT count(*) AS bob_sees_alices FROM asyncjobs.asyncoperation
 WHERE asyncoperationid IN (:a1, :a2);
SELECT count(*) AS bob_traces FROM asyncjobs.plugintracelog;
-- and may not manage or wait for alice's
SELECT pg_temp.try(format('SELECT asyncjobs.cancel(%s)', :a1));
SELECT pg_temp.try(format('SELECT asyncjobs.wait(%s, ''0'')', :a1));
SELECT pg_temp.try(format('SELECT asyncjobs.retry(%s)', :a2));
-- the tables stay closed to writes
SELECT pg_temp.try($$UPDATE asyncjobs.job SET priority = 0$$);
SELECT pg_temp.try($$DELETE FROM asyncjobs.job_history$$);
-- a role with alice's privileges sees and manages alice's jobs
SET ROLE regress_sec_team;
SELECT count(*) AS team_sees FROM asyncjobs.asyncoperation;
SELECT asyncjobs.pause(:a1);
-- asyncjobs_admin sees and manages every role's jobs, without being superuser
SET ROLE regress_sec_boss;
SELECT count(*) - :all_jobs AS boss_sees_new FROM asyncjobs.asyncoperation;
SELECT asyncjobs.cancel(:b1), asyncjobs.cancel(:a1);
SELECT asyncjobs.wait(:a1, '0');
SELECT asyncjobs.pause_operation('sec_bob'), asyncjobs.resume_operation('sec_bob');
RESET ROLE;

-- the pool is public; the job a worker runs shows only to who may see it
-- (running InProgress: a job caught in a fused batch soon yields, and is
-- not running for a moment before it runs on its own)
CREATE FUNCTION pg_temp.running(job bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..600 LOOP
        IF EXISTS (SELECT 1 FROM asyncjobs.workers w
                    WHERE w.asyncoperationid = job AND w.state = 'running')
           AND EXISTS (SELECT 1 FROM asyncjobs.job j
                        WHERE j.asyncoperationid = job AND j.statecode = 2) THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END
$$;
SET ROLE regress_sec_alice;
SELECT asyncjobs.enqueue_sql('SELECT pg_sleep(60)', max_retries => 0) AS sleeper \gset
RESET ROLE;
SELECT pg_temp.running(:sleeper);
SET ROLE regress_sec_alice;
SELECT operation, state FROM asyncjobs.workers WHERE asyncoperationid = :sleeper;
SET ROLE regress_sec_boss;
SELECT operation, state FROM asyncjobs.workers WHERE asyncoperationid = :sleeper;
SET ROLE regress_sec_bob;
SELECT count(*) AS bob_sees_alices_running FROM asyncjobs.workers
 WHERE asyncoperationid = :sleeper OR operation = 'sql';
SELECT count(*) > 0 AS bob_sees_a_busy_worker FROM asyncjobs.workers
 WHERE state = 'running' AND asyncoperationid IS NULL;
RESET ROLE;
SELECT asyncjobs.cancel(:sleeper);
SELECT asyncjobs.wait(:sleeper, '60 seconds');

SELECT asyncjobs.cancel(asyncoperationid) FROM asyncjobs.job
 WHERE messagename IN ('sec_held', 'sec_bob');
DELETE FROM asyncjobs.operation_type WHERE name LIKE 'sec\_%';
DROP FUNCTION sec_fail(jsonb);
REVOKE ALL ON SCHEMA public FROM regress_sec_alice;
DROP ROLE regress_sec_team, regress_sec_boss, regress_sec_bob, regress_sec_alice;
