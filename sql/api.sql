--
-- The SQL API: register, enqueue, run (by the real workers), outcome.
-- Every job is awaited with asyncjobs.wait(), so the output does not
-- depend on how fast the workers are.
--
CREATE EXTENSION asyncjobs;

SELECT name, operationtype, handler, builtin
  FROM asyncjobs.operation_type ORDER BY name;

SELECT statecode, statename, statuscode, statusname
  FROM asyncjobs.status ORDER BY statuscode;

-- the view has Dataverse's columns
SELECT attname FROM pg_attribute
 WHERE attrelid = 'asyncjobs.asyncoperation'::regclass AND attnum > 0
 ORDER BY attnum;

-- history is partitioned by day, with partitions made ahead of need
SELECT count(*) >= 8 AS enough_partitions
  FROM pg_inherits WHERE inhparent = 'asyncjobs.job_history'::regclass;
SELECT asyncjobs.maintain_partitions() AS created_again;

-- a handler and its operation
CREATE TABLE items (id int PRIMARY KEY, note text);
CREATE FUNCTION add_item(data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO items VALUES ((data->>'id')::int, data->>'note');
    RETURN jsonb_build_object('added', data->'id');
END
$$;
SELECT asyncjobs.register_operation('add_item', 'add_item(jsonb)',
                                    max_retries => 3, timeout => '30 seconds');
SELECT name, operationtype, handler, max_retries, retry_delay, retry_delay_max,
       timeout, max_concurrency, priority, owner
  FROM asyncjobs.operation_type WHERE name = 'add_item';
-- registering again updates it
SELECT asyncjobs.register_operation('add_item', 'add_item(jsonb)',
                                    max_retries => 2, priority => 5);
SELECT max_retries, priority FROM asyncjobs.operation_type WHERE name = 'add_item';

-- a job that succeeds
SELECT asyncjobs.enqueue('add_item', '{"id": 1, "note": "one"}',
                         name => 'first item', regarding => 'items/1') AS j1 \gset
SELECT asyncjobs.wait(:j1);
SELECT name, operationtype, messagename, statecode, statuscode, ownerid,
       retrycount, maxretries, result, regardingobjectid, priority, depth,
       errorcode, message, parentid,
       completedon >= startedon AS ordered, executiontimespan >= 0 AS timed,
       hostid IS NOT NULL AS has_host, jsonb_array_length(attempts) AS attempts,
       attempts->0->>'outcome' AS outcome
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j1;
SELECT * FROM items ORDER BY id;
-- completed jobs live in history, not in the active table
SELECT (SELECT count(*) FROM asyncjobs.job WHERE asyncoperationid = :j1) AS active,
       (SELECT count(*) FROM asyncjobs.job_history WHERE asyncoperationid = :j1) AS history;

-- a job that fails for good (duplicate key is not transient)
SELECT asyncjobs.enqueue('add_item', '{"id": 1, "note": "again"}') AS j2 \gset
SELECT asyncjobs.wait(:j2);
SELECT statecode, statuscode, retrycount, errorcode, friendlymessage,
       jsonb_array_length(attempts) AS attempts, attempts->0->>'errorcode' AS first_error
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j2;
-- the message keeps DETAIL and CONTEXT, like psql shows them
SELECT message FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j2;
-- the seed query lists failed jobs
SELECT asyncoperationid = :j2 AS is_j2
  FROM asyncjobs.asyncoperation WHERE statecode = 3 AND statuscode = 31;

-- SQL jobs (operationtype 54)
SELECT asyncjobs.enqueue_sql($$INSERT INTO items VALUES (2, 'two'), (3, 'three')$$,
                             data => '{"why": "test"}') AS j3 \gset
SELECT asyncjobs.wait(:j3);
SELECT operationtype, messagename, statuscode, result, data
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j3;
SELECT count(*) FROM items;
-- a failing statement rolls back the whole command
SELECT asyncjobs.enqueue_sql($$INSERT INTO items VALUES (4, 'four'); SELECT 1/0$$) AS j4 \gset
SELECT asyncjobs.wait(:j4);
SELECT statuscode, errorcode, friendlymessage FROM asyncjobs.asyncoperation
 WHERE asyncoperationid = :j4;
SELECT count(*) FROM items WHERE id = 4;
-- transaction control cannot break out of the job's transaction
SELECT asyncjobs.enqueue_sql('COMMIT') AS j5 \gset
SELECT asyncjobs.wait(:j5);
SELECT errorcode, friendlymessage FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j5;

-- enqueue is transactional: a rolled-back enqueue leaves no job
SELECT count(*) AS jobs_before FROM asyncjobs.asyncoperation \gset
BEGIN;
SELECT asyncjobs.enqueue_sql($$INSERT INTO items VALUES (9, 'rolled back')$$) IS NOT NULL AS enqueued;
ROLLBACK;
SELECT count(*) - :jobs_before AS new_jobs FROM asyncjobs.asyncoperation;
SELECT pg_sleep(0.3);
SELECT count(*) FROM items WHERE id = 9;

-- postponed: Suspended / Waiting until its time
SELECT asyncjobs.enqueue_sql('SELECT 1', postpone_until => now() + interval '1 hour') AS j6 \gset
SELECT asyncjobs.wait(:j6, '0.3 seconds');
SELECT statecode, statuscode, postponeuntil > now() AS later
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j6;
-- one whose time is past runs at once
SELECT asyncjobs.enqueue_sql('SELECT 1', postpone_until => now() - interval '1 hour') AS j7 \gset
SELECT asyncjobs.wait(:j7);

-- transient errors are retried with backoff, then fail with the last error
CREATE FUNCTION flaky(data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'try again later' USING ERRCODE = 'AJ001';
END
$$;
SELECT asyncjobs.register_operation('flaky', 'flaky(jsonb)', max_retries => 2,
                                    retry_delay => '10 milliseconds',
                                    retry_delay_max => '20 milliseconds');
SELECT asyncjobs.enqueue('flaky') AS j8 \gset
SELECT asyncjobs.wait(:j8);
SELECT statuscode, retrycount, errorcode, friendlymessage,
       jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j8;
-- max_retries of the job overrides the type's
SELECT asyncjobs.enqueue('flaky', max_retries => 0) AS j9 \gset
SELECT asyncjobs.wait(:j9);
SELECT statuscode, retrycount, maxretries FROM asyncjobs.asyncoperation
 WHERE asyncoperationid = :j9;

-- the type's timeout cancels a job that runs too long (57014, transient)
CREATE FUNCTION sleepy(data jsonb) RETURNS void
LANGUAGE sql AS $$ SELECT pg_sleep((data->>'s')::float8) $$;
SELECT asyncjobs.register_operation('sleepy', 'sleepy(jsonb)', max_retries => 0,
                                    timeout => '100 milliseconds');
SELECT asyncjobs.enqueue('sleepy', '{"s": 5}') AS j10 \gset
SELECT asyncjobs.wait(:j10);
SELECT statuscode, errorcode, friendlymessage, executiontimespan < 4 AS cut_short
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j10;

-- jobs run as the role that enqueued them, never as the worker's superuser
CREATE ROLE regress_aj_user;
GRANT USAGE, CREATE ON SCHEMA public TO regress_aj_user;
CREATE FUNCTION whoami(data jsonb) RETURNS text
LANGUAGE sql AS $$ SELECT current_user::text $$;
SET ROLE regress_aj_user;
SELECT asyncjobs.register_operation('whoami', 'whoami(jsonb)');
SELECT asyncjobs.enqueue('whoami') AS j11 \gset
SELECT asyncjobs.enqueue_sql('RESET ROLE') AS j12 \gset
SELECT asyncjobs.enqueue_sql('SELECT count(*) FROM pg_authid') AS j13 \gset
RESET ROLE;
SELECT asyncjobs.wait(:j11), asyncjobs.wait(:j12), asyncjobs.wait(:j13);
SELECT asyncoperationid - :j11 AS job, ownerid, statuscode, result, errorcode, friendlymessage
  FROM asyncjobs.asyncoperation
 WHERE asyncoperationid IN (:j11, :j12, :j13) ORDER BY 1;

-- the workers
SELECT count(*) AS workers FROM asyncjobs.workers WHERE database = current_database();
-- outside a job there is no current job
SELECT asyncjobs.current_job();
-- a job sees its own id, and a job it enqueues is its child
CREATE FUNCTION spawn(data jsonb) RETURNS bigint
LANGUAGE sql AS $$ SELECT asyncjobs.enqueue_sql('SELECT asyncjobs.current_job()') $$;
SELECT asyncjobs.register_operation('spawn', 'spawn(jsonb)');
SELECT asyncjobs.enqueue('spawn') AS j14 \gset
SELECT asyncjobs.wait(:j14);
SELECT result::bigint AS child FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j14 \gset
SELECT asyncjobs.wait(:child);
SELECT c.parentid = :j14 AS parent_ok, c.depth, c.correlationid = p.correlationid AS same_correlation
  FROM asyncjobs.asyncoperation c, asyncjobs.asyncoperation p
 WHERE c.asyncoperationid = :child AND p.asyncoperationid = :j14;

-- enqueue keeps the operation types it looked up: a change is seen by the
-- next enqueue, in the same transaction or statement too, and one rolled
-- back is forgotten (an operation without handler: no worker runs its jobs)
SELECT asyncjobs.register_operation('kept', priority => 1, max_retries => 1);
SELECT asyncjobs.enqueue('kept', name => 'k1') > 0 AS k1;
SELECT asyncjobs.register_operation('kept', priority => 2, max_retries => 2);
SELECT asyncjobs.enqueue('kept', name => 'k2') > 0 AS k2;
UPDATE asyncjobs.operation_type SET priority = 3 WHERE name = 'kept';
SELECT asyncjobs.enqueue('kept', name => 'k3') > 0 AS k3;
BEGIN;
SELECT asyncjobs.register_operation('kept', priority => 4);
SELECT asyncjobs.enqueue('kept', name => 'k4') > 0 AS k4;
SAVEPOINT s;
SELECT asyncjobs.register_operation('kept', priority => 5);
SELECT asyncjobs.enqueue('kept', name => 'k5') > 0 AS k5;
ROLLBACK TO s;
SELECT asyncjobs.enqueue('kept', name => 'k6') > 0 AS k6;
ROLLBACK;
SELECT asyncjobs.enqueue('kept', name => 'k7') > 0 AS k7;
SELECT asyncjobs.register_operation('kept', priority => 8),
       asyncjobs.enqueue('kept', name => 'k8') > 0 AS k8;
SELECT name, priority, maxretries FROM asyncjobs.job WHERE messagename = 'kept' ORDER BY name;
-- no job in a read-only transaction, with the executor's error
BEGIN READ ONLY;
SELECT asyncjobs.enqueue('kept');
ROLLBACK;
-- a trigger on the job table still fires for each job
CREATE FUNCTION job_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'trigger saw job %', NEW.name;
    RETURN NULL;
END
$$;
CREATE TRIGGER job_inserted AFTER INSERT ON asyncjobs.job
    FOR EACH ROW EXECUTE FUNCTION job_inserted();
SELECT asyncjobs.enqueue('kept', name => 'k9') > 0 AS k9;
SELECT count(*) FROM asyncjobs.enqueue_many('kept', ARRAY['{}', '{}']::jsonb[], name => 'k10');
DROP TRIGGER job_inserted ON asyncjobs.job;
DROP FUNCTION job_inserted();
SELECT asyncjobs.enqueue('kept', name => 'k11') > 0 AS k11;
-- a deleted operation is gone for enqueue at once
DELETE FROM asyncjobs.job WHERE messagename = 'kept';
DELETE FROM asyncjobs.operation_type WHERE name = 'kept';
SELECT asyncjobs.enqueue('kept');

DROP OWNED BY regress_aj_user;
DROP ROLE regress_aj_user;
