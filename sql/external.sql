--
-- External workers: claim, complete, fail, heartbeat.
-- Operations without a handler are left alone by the background workers,
-- so this file plays the external worker and the output is deterministic.
-- Tokens and times vary: they are kept in psql variables and compared.
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

-- job ids from a known base, so that messages naming jobs do not depend on
-- the tests that ran before (the sequence only moves forward)
SELECT last_value < 10000000 AS below_base FROM asyncjobs.asyncoperation_id_seq;
SELECT setval('asyncjobs.asyncoperation_id_seq', 10000000) AS base;

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
-- the same, with the DETAIL and HINT
CREATE FUNCTION pg_temp.try_full(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    d text;
    h text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || E'\nDETAIL: ' || d || E'\nHINT: ' || h;
END
$$;

CREATE ROLE regress_aj_ext_owner;
CREATE ROLE regress_aj_ext_member IN ROLE regress_aj_ext_owner;
CREATE ROLE regress_aj_ext_stranger;
CREATE FUNCTION ext_handler(data jsonb) RETURNS void LANGUAGE sql AS '';
SELECT asyncjobs.register_operation('ext_handled', 'ext_handler(jsonb)');
SET ROLE regress_aj_ext_owner;
SELECT asyncjobs.register_operation('ext_mail', max_retries => 2,
                                    retry_delay => '10 seconds',
                                    retry_delay_max => '15 seconds');
SELECT asyncjobs.register_operation('ext_sms', max_retries => 0);
RESET ROLE;

-- the public functions, as DESIGN names them
SELECT p.oid::regprocedure AS function, pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public
  FROM pg_proc p
 WHERE p.pronamespace = 'asyncjobs'::regnamespace
   AND p.proname IN ('claim', 'complete', 'fail', 'heartbeat')
 ORDER BY p.proname;
-- and the internal ones are not for users
SELECT count(*) AS public_internal_functions
  FROM pg_proc p
 WHERE p.pronamespace = 'asyncjobs'::regnamespace
   AND p.proname IN ('_claim_impl', '_complete_impl', '_fail_impl', '_heartbeat_impl',
                     '_requeue_expired_leases', '_leased_job')
   AND has_function_privilege('public', p.oid, 'EXECUTE');

-- nothing to claim yet
SELECT count(*) FROM asyncjobs.claim(ARRAY['ext_mail']);

--------------------------------------------------------------------------
-- bad input: clear errors, nothing claimed
--------------------------------------------------------------------------
SELECT asyncjobs.enqueue('ext_mail', '{"to": "ada"}') AS m1 \gset
SELECT pg_temp.try($$SELECT asyncjobs.claim(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim('{}')$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail', NULL])$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail', 'no_such_operation'])$$);
SELECT pg_temp.try_full($$SELECT asyncjobs.claim(ARRAY['ext_handled'])$$);
SELECT pg_temp.try_full($$SELECT asyncjobs.claim(ARRAY['sql'])$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], 0)$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], 1001)$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], lease => NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], lease => '0')$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], lease => '-1 minute')$$);
SELECT pg_temp.try_full($$SELECT asyncjobs.claim(ARRAY['ext_mail'], lease => '25 hours')$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], worker => '')$$);
SELECT pg_temp.try($$SELECT asyncjobs.claim(ARRAY['ext_mail'], worker => repeat('w', 257))$$);
-- only roles with the privileges of the operation's owner may claim
SET ROLE regress_aj_ext_stranger;
SELECT pg_temp.try_full($$SELECT asyncjobs.claim(ARRAY['ext_mail'])$$);
-- the internal functions are not for users
SELECT pg_temp.try($$SELECT asyncjobs._claim(NULL, 'x', 1, NULL, true, '1 minute')$$);
SELECT pg_temp.try($$SELECT asyncjobs._requeue_expired_leases()$$);
SELECT pg_temp.try($$SELECT * FROM asyncjobs.job$$);
RESET ROLE;
SELECT statecode, statuscode, hostid FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m1;

--------------------------------------------------------------------------
-- claim and complete
--------------------------------------------------------------------------
-- a member of the owner's role claims; the worker name defaults to the role
SET ROLE regress_aj_ext_member;
SELECT asyncoperationid = :m1 AS is_m1, token IS NOT NULL AS has_token, operation, data,
       retrycount, lease_expires BETWEEN now() + interval '4 minutes 59 seconds'
                                     AND now() + interval '5 minutes 1 second' AS five_minutes,
       token AS t1
  FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
\echo is_m1=:is_m1 has_token=:has_token operation=:operation data=:data retrycount=:retrycount five_minutes=:five_minutes
RESET ROLE;
SELECT statecode, statuscode, hostid, startedon IS NOT NULL AS started
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m1;
SELECT lockedby, leasetoken = :'t1' AS token_kept FROM asyncjobs.job WHERE asyncoperationid = :m1;
-- a held job is not claimed twice
SELECT count(*) FROM asyncjobs.claim(ARRAY['ext_mail']);

-- reports check the job, the token and the caller
SELECT pg_temp.try($$SELECT asyncjobs.complete(NULL, gen_random_uuid())$$);
SELECT pg_temp.try(format('SELECT asyncjobs.complete(%s, NULL)', :m1));
SELECT pg_temp.try($$SELECT asyncjobs.complete(-1, gen_random_uuid())$$);
SELECT pg_temp.try_full(format('SELECT asyncjobs.complete(%s, gen_random_uuid())', :m1));
SELECT pg_temp.try(format('SELECT asyncjobs.fail(%s, gen_random_uuid(), %L)', :m1, 'x'));
SELECT pg_temp.try(format('SELECT asyncjobs.heartbeat(%s, gen_random_uuid())', :m1));
SET ROLE regress_aj_ext_stranger;
SELECT pg_temp.try_full(format('SELECT asyncjobs.complete(%s, %L)', :m1, :'t1'));
RESET ROLE;
SELECT statecode, statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m1;

-- the right token completes it
SET ROLE regress_aj_ext_member;
SELECT asyncjobs.complete(:m1, :'t1', '{"sent": true}');
RESET ROLE;
SELECT asyncjobs.wait(:m1);
SELECT statecode, statuscode, result, retrycount, errorcode, hostid,
       executiontimespan >= 0 AS timed, completedon >= startedon AS ordered,
       jsonb_array_length(attempts) AS attempts,
       (attempts->0) - 'started' - 'ended' AS attempt,
       (attempts->0->>'ended')::timestamptz >= (attempts->0->>'started')::timestamptz AS attempt_timed
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m1;
-- a completed job cannot be reported on again
SELECT pg_temp.try_full(format('SELECT asyncjobs.complete(%s, %L)', :m1, :'t1'));
SELECT pg_temp.try(format('SELECT asyncjobs.fail(%s, %L, %L)', :m1, :'t1', 'late'));
SELECT pg_temp.try(format('SELECT asyncjobs.heartbeat(%s, %L)', :m1, :'t1'));
SET ROLE regress_aj_ext_stranger;
SELECT pg_temp.try(format('SELECT asyncjobs.complete(%s, %L)', :m1, :'t1'));
RESET ROLE;
-- a NULL result is fine
SELECT asyncjobs.enqueue('ext_mail') AS m2 \gset
SELECT token AS t2 FROM asyncjobs.claim(ARRAY['ext_mail'], worker => 'mailer-1') \gset
SELECT asyncjobs.complete(:m2, :'t2');
SELECT statuscode, result, hostid, attempts->0->>'worker' AS worker
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m2;

--------------------------------------------------------------------------
-- several jobs at once, in claim order; other operations untouched
--------------------------------------------------------------------------
SELECT count(asyncjobs.enqueue('ext_mail', jsonb_build_object('n', g), priority => g % 2))
  FROM generate_series(1, 5) g;
SELECT asyncjobs.enqueue('ext_sms', '{"n": 9}') AS s1 \gset
CREATE TEMP TABLE held AS
SELECT * FROM asyncjobs.claim(ARRAY['ext_mail', 'ext_sms'], max_jobs => 4,
                              lease => '1 minute', worker => 'batch');
SELECT operation, data, retrycount,
       lease_expires <= now() + interval '1 minute' AS one_minute
  FROM held;
SELECT count(DISTINCT token) AS tokens FROM held;
SELECT asyncjobs.complete(asyncoperationid, token, data) FROM held;
SELECT count(*) AS still_held FROM asyncjobs.job
 WHERE messagename IN ('ext_mail', 'ext_sms') AND statecode = 2;
DROP TABLE held;
-- the rest of them
SELECT data, asyncjobs.complete(asyncoperationid, token)
  FROM asyncjobs.claim(ARRAY['ext_mail', 'ext_sms'], max_jobs => 10);
-- a paused operation gives nothing
SELECT asyncjobs.enqueue('ext_sms') AS s2 \gset
SELECT asyncjobs.pause_operation('ext_sms');
SELECT count(*) FROM asyncjobs.claim(ARRAY['ext_sms']);
SELECT asyncjobs.resume_operation('ext_sms');
SELECT count(asyncjobs.complete(asyncoperationid, token))
  FROM asyncjobs.claim(ARRAY['ext_sms']);

--------------------------------------------------------------------------
-- fail
--------------------------------------------------------------------------
SELECT asyncjobs.enqueue('ext_mail', '{"to": "bob"}') AS m3 \gset
SELECT token AS t3 FROM asyncjobs.claim(ARRAY['ext_mail'], worker => 'mailer-1') \gset
SELECT pg_temp.try(format('SELECT asyncjobs.fail(%s, %L, NULL)', :m3, :'t3'));
SELECT pg_temp.try(format('SELECT asyncjobs.fail(%s, %L, %L)', :m3, :'t3', ' '));
SELECT pg_temp.try(format('SELECT asyncjobs.fail(%s, %L, %L, NULL)', :m3, :'t3', 'x'));
-- transient: Retrying, after retry_delay * 2^retrycount +/- 10 %
SELECT asyncjobs.fail(:m3, :'t3', 'SMTP server busy', transient => true);
SELECT statecode, statuscode, retrycount, errorcode, message, friendlymessage, hostid,
       postponeuntil BETWEEN now() + interval '8.5 seconds' AND now() + interval '11 seconds' AS backoff,
       (attempts->-1) - 'started' - 'ended' AS attempt
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m3;
SELECT pg_temp.try(format('SELECT asyncjobs.complete(%s, %L)', :m3, :'t3'));
-- not due yet
SELECT count(*) FROM asyncjobs.claim(ARRAY['ext_mail']);
SELECT asyncjobs.postpone(:m3, now());
SELECT retrycount, token AS t3 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
\echo retrycount=:retrycount
SELECT asyncjobs.fail(:m3, :'t3', 'SMTP server busy', transient => true);
-- 20 seconds, capped by retry_delay_max at 15
SELECT retrycount, postponeuntil BETWEEN now() + interval '13 seconds'
                                     AND now() + interval '16.5 seconds' AS capped
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m3;
SELECT asyncjobs.postpone(:m3, now());
SELECT token AS t3 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
-- the retry budget is spent: Failed with the transient code
SELECT asyncjobs.fail(:m3, :'t3', 'SMTP server busy', transient => true);
SELECT statecode, statuscode, retrycount, errorcode, friendlymessage,
       jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes,
       jsonb_path_query_array(attempts, '$[*].attempt') AS numbers
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m3;
SELECT asyncjobs.wait(:m3);
-- permanent: Failed at once, even with retries left
SELECT asyncjobs.enqueue('ext_mail', '{"to": "nobody"}') AS m4 \gset
SELECT token AS t4 FROM asyncjobs.claim(ARRAY['ext_mail'], worker => 'mailer-2') \gset
SELECT asyncjobs.fail(:m4, :'t4', 'no such mailbox');
SELECT statecode, statuscode, retrycount, errorcode, message, friendlymessage, result,
       (attempts->0) - 'started' - 'ended' AS attempt
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m4;
-- the seed query finds them
SELECT count(*) FROM asyncjobs.asyncoperation
 WHERE statecode = 3 AND statuscode = 31 AND asyncoperationid IN (:m3, :m4);

--------------------------------------------------------------------------
-- heartbeat
--------------------------------------------------------------------------
SELECT asyncjobs.enqueue('ext_mail') AS m5 \gset
SELECT token AS t5 FROM asyncjobs.claim(ARRAY['ext_mail'], lease => '1 minute') \gset
SELECT pg_temp.try(format('SELECT asyncjobs.heartbeat(%s, %L, NULL)', :m5, :'t5'));
SELECT pg_temp.try(format('SELECT asyncjobs.heartbeat(%s, %L, %L)', :m5, :'t5', '0'));
SELECT pg_temp.try(format('SELECT asyncjobs.heartbeat(%s, %L, %L)', :m5, :'t5', '2 days'));
SELECT asyncjobs.heartbeat(:m5, :'t5', '10 minutes');
SELECT leaseexpires > now() + interval '9 minutes' AS extended
  FROM asyncjobs.job WHERE asyncoperationid = :m5;
SELECT asyncjobs.heartbeat(:m5, :'t5');
SELECT leaseexpires BETWEEN now() + interval '4 minutes' AND now() + interval '6 minutes' AS five_minutes
  FROM asyncjobs.job WHERE asyncoperationid = :m5;
SELECT statecode, statuscode, retrycount FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m5;

--------------------------------------------------------------------------
-- expired leases
--------------------------------------------------------------------------
-- An expired lease is still honoured while nobody requeued the job (the
-- expiry is simulated; the row lock keeps anyone else from requeueing).
BEGIN;
UPDATE asyncjobs.job SET leaseexpires = now() - interval '1 second'
 WHERE asyncoperationid = :m5;
SELECT asyncjobs.heartbeat(:m5, :'t5', '1 minute');
SELECT leaseexpires > now() AS renewed FROM asyncjobs.job WHERE asyncoperationid = :m5;
COMMIT;
-- once expired, the next claim requeues it (a transient failure) and may
-- hand it to another worker, with a new token
BEGIN;
UPDATE asyncjobs.job SET leaseexpires = now() - interval '1 second'
 WHERE asyncoperationid = :m5;
SELECT asyncoperationid = :m5 AS is_m5, token <> :'t5' AS new_token, retrycount,
       token AS t5b
  FROM asyncjobs.claim(ARRAY['ext_mail'], worker => 'mailer-2') \gset
COMMIT;
\echo is_m5=:is_m5 new_token=:new_token retrycount=:retrycount
SELECT statecode, statuscode, hostid, errorcode, friendlymessage,
       jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes,
       attempts->0->>'errorcode' AS first_error
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m5;
-- the old token can do nothing with it now
SELECT pg_temp.try_full(format('SELECT asyncjobs.complete(%s, %L)', :m5, :'t5'));
SELECT pg_temp.try(format('SELECT asyncjobs.fail(%s, %L, %L)', :m5, :'t5', 'x'));
SELECT pg_temp.try(format('SELECT asyncjobs.heartbeat(%s, %L)', :m5, :'t5'));
SELECT asyncjobs.complete(:m5, :'t5b', '"second worker"');
SELECT statuscode, result, hostid, jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m5;

-- requeued without being claimed again: Ready, and the token is dead
SELECT asyncjobs.enqueue('ext_mail') AS m6 \gset
SELECT asyncjobs.enqueue('ext_sms') AS s3 \gset
BEGIN;
SELECT token AS t6 FROM asyncjobs.claim(ARRAY['ext_mail'], worker => 'mailer-3') \gset
SELECT token AS ts3 FROM asyncjobs.claim(ARRAY['ext_sms'], worker => 'sms-1') \gset
UPDATE asyncjobs.job SET leaseexpires = now() - interval '1 second'
 WHERE asyncoperationid IN (:m6, :s3);
-- of the given operations only
SELECT asyncjobs._requeue_expired_leases(ARRAY['ext_mail']) AS requeued;
SELECT asyncjobs._requeue_expired_leases(ARRAY['ext_mail']) AS requeued_again;
COMMIT;
SELECT statecode, statuscode, retrycount, hostid, errorcode, message
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m6;
SELECT pg_temp.try_full(format('SELECT asyncjobs.complete(%s, %L)', :m6, :'t6'));
-- ext_sms has no retries: an expired lease fails it
SELECT asyncjobs._requeue_expired_leases() IS NOT NULL AS requeued;
SELECT statecode, statuscode, retrycount, errorcode, friendlymessage,
       message,
       (attempts->0) - 'started' - 'ended' AS attempt
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :s3;
SELECT pg_temp.try_full(format('SELECT asyncjobs.fail(%s, %L, %L)', :s3, :'ts3', 'x'));
SELECT count(asyncjobs.complete(asyncoperationid, token))
  FROM asyncjobs.claim(ARRAY['ext_mail']);

--------------------------------------------------------------------------
-- cancel and pause while an external worker holds the job
--------------------------------------------------------------------------
-- heartbeat tells the worker; the job ends Canceled at once
SELECT asyncjobs.enqueue('ext_mail') AS m7 \gset
SELECT token AS t7 FROM asyncjobs.claim(ARRAY['ext_mail'], worker => 'mailer-4') \gset
SELECT asyncjobs.cancel(:m7);
SELECT statecode, statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m7;
SELECT asyncjobs.heartbeat(:m7, :'t7');
SELECT asyncjobs.wait(:m7);
SELECT statuscode, friendlymessage, (attempts->0) - 'started' - 'ended' AS attempt
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m7;
SELECT pg_temp.try_full(format('SELECT asyncjobs.complete(%s, %L)', :m7, :'t7'));
-- complete of a Canceling job: Canceled, the result is discarded
SELECT asyncjobs.enqueue('ext_mail') AS m8 \gset
SELECT token AS t8 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
SELECT asyncjobs.cancel(:m8);
SELECT asyncjobs.complete(:m8, :'t8', '{"sent": true}');
SELECT statuscode, result, jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m8;
-- fail of a Canceling job: Canceled
SELECT asyncjobs.enqueue('ext_mail') AS m9 \gset
SELECT token AS t9 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
SELECT asyncjobs.cancel(:m9);
SELECT asyncjobs.fail(:m9, :'t9', 'stopped', transient => true);
SELECT statuscode, retrycount, jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m9;
-- complete of a Pausing job: the job is done, it ends Succeeded
SELECT asyncjobs.enqueue('ext_mail') AS m10 \gset
SELECT token AS t10 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
SELECT asyncjobs.pause(:m10);
SELECT asyncjobs.complete(:m10, :'t10', '{"sent": true}');
SELECT statuscode, result FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m10;
-- fail or heartbeat of a Pausing job: Paused, and it runs again when resumed
SELECT asyncjobs.enqueue('ext_mail') AS m11 \gset
SELECT token AS t11 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
SELECT asyncjobs.pause(:m11);
SELECT asyncjobs.fail(:m11, :'t11', 'interrupted');
SELECT statecode, statuscode, hostid, jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m11;
SELECT asyncjobs.resume(:m11);
SELECT token AS t11 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
SELECT asyncjobs.pause(:m11);
SELECT asyncjobs.heartbeat(:m11, :'t11');
SELECT statecode, statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m11;
SELECT asyncjobs.resume(:m11);
SELECT count(asyncjobs.complete(asyncoperationid, token))
  FROM asyncjobs.claim(ARRAY['ext_mail']);
SELECT statuscode, jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m11;
-- an expired lease of a Canceling job: Canceled
SELECT asyncjobs.enqueue('ext_mail') AS m12 \gset
SELECT token AS t12 FROM asyncjobs.claim(ARRAY['ext_mail']) \gset
SELECT asyncjobs.cancel(:m12);
BEGIN;
UPDATE asyncjobs.job SET leaseexpires = now() - interval '1 second'
 WHERE asyncoperationid = :m12;
SELECT count(*) FROM asyncjobs.claim(ARRAY['ext_mail']);
COMMIT;
SELECT statuscode, jsonb_path_query_array(attempts, '$[*].outcome') AS outcomes
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :m12;

--------------------------------------------------------------------------
-- dependency tokens and max_concurrency hold for external workers too
--------------------------------------------------------------------------
SELECT asyncjobs.enqueue('ext_mail', '{"n": 1}', dependency_token => 'acct-1') AS d1 \gset
SELECT asyncjobs.enqueue('ext_mail', '{"n": 2}', dependency_token => 'acct-1') AS d2 \gset
SELECT data, token AS td1 FROM asyncjobs.claim(ARRAY['ext_mail'], max_jobs => 10) \gset
SELECT count(*) FROM asyncjobs.claim(ARRAY['ext_mail'], max_jobs => 10);
SELECT asyncjobs.complete(:d1, :'td1');
SELECT data, token AS td2 FROM asyncjobs.claim(ARRAY['ext_mail'], max_jobs => 10) \gset
SELECT asyncjobs.complete(:d2, :'td2');
SET ROLE regress_aj_ext_owner;
SELECT asyncjobs.register_operation('ext_sms', max_retries => 0, max_concurrency => 1);
RESET ROLE;
SELECT count(asyncjobs.enqueue('ext_sms')) FROM generate_series(1, 3);
CREATE TEMP TABLE held AS SELECT * FROM asyncjobs.claim(ARRAY['ext_sms'], max_jobs => 3);
SELECT count(*) AS claimed FROM held;
SELECT count(*) FROM asyncjobs.claim(ARRAY['ext_sms'], max_jobs => 3);
SELECT asyncjobs.complete(asyncoperationid, token) FROM held;
SELECT count(*) AS claimed FROM asyncjobs.claim(ARRAY['ext_sms'], max_jobs => 3);
DROP TABLE held;

--------------------------------------------------------------------------
-- clean up: leave no active job behind
--------------------------------------------------------------------------
SELECT count(asyncjobs.cancel(asyncoperationid)) AS canceled
  FROM asyncjobs.job WHERE messagename IN ('ext_mail', 'ext_sms');
BEGIN;
UPDATE asyncjobs.job SET leaseexpires = now() - interval '1 second'
 WHERE messagename IN ('ext_mail', 'ext_sms');
SELECT asyncjobs._requeue_expired_leases(ARRAY['ext_mail', 'ext_sms']) AS requeued;
COMMIT;
SELECT count(*) AS active FROM asyncjobs.job WHERE messagename IN ('ext_mail', 'ext_sms');
DELETE FROM asyncjobs.operation_type WHERE name IN ('ext_mail', 'ext_sms', 'ext_handled');
DROP FUNCTION ext_handler(jsonb);
DROP ROLE regress_aj_ext_member, regress_aj_ext_stranger, regress_aj_ext_owner;
