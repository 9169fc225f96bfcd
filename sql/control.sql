--
-- Job control: every transition cancel / pause / resume / postpone / retry
-- allows or refuses, dependency tokens, dedupe keys, whole operations.
-- Jobs of an operation without a handler are never taken by the
-- background workers, so their states here change only by these calls;
-- Locked states are made with the claim that external workers use.
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
CREATE FUNCTION pg_temp.st(job bigint) RETURNS text
LANGUAGE sql AS $$
    SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation
     WHERE asyncoperationid = job
$$;
-- marks up to n due jobs of the operation InProgress, as a worker would
CREATE FUNCTION pg_temp.take(op text, n int DEFAULT 10) RETURNS bigint[]
LANGUAGE sql AS $$
    SELECT coalesce(array_agg(asyncoperationid ORDER BY asyncoperationid), '{}')
      FROM asyncjobs._claim(NULL, 'test', n, ARRAY[op], true, '1 hour')
$$;

SELECT asyncjobs.register_operation('held');

-- Ready
SELECT asyncjobs.enqueue('held') AS j \gset
SELECT pg_temp.st(:j);
SELECT asyncjobs.cancel(:j), pg_temp.st(:j);
SELECT asyncjobs.cancel(:j), pg_temp.st(:j);
SELECT friendlymessage FROM asyncjobs.asyncoperation WHERE asyncoperationid = :j;

-- Ready -> Paused -> (postponed while paused) -> Waiting -> Ready
SELECT asyncjobs.enqueue('held') AS j \gset
SELECT asyncjobs.pause(:j), pg_temp.st(:j);
SELECT asyncjobs.pause(:j), pg_temp.st(:j);
SELECT asyncjobs.postpone(:j, now() + interval '1 hour'), pg_temp.st(:j);
SELECT asyncjobs.postpone(:j, (SELECT postponeuntil FROM asyncjobs.job WHERE asyncoperationid = :j));
SELECT asyncjobs.resume(:j), pg_temp.st(:j);
SELECT asyncjobs.resume(:j), pg_temp.st(:j);
SELECT asyncjobs.postpone(:j, now() - interval '1 hour'), pg_temp.st(:j);
SELECT asyncjobs.pause(:j), asyncjobs.cancel(:j), pg_temp.st(:j);

-- Retrying keeps its status when postponed to later
SELECT asyncjobs.enqueue('held') AS j \gset
UPDATE asyncjobs.job SET statecode = 1, statuscode = 11, retrycount = 1,
       postponeuntil = now() + interval '1 minute', runafter = now() + interval '1 minute'
 WHERE asyncoperationid = :j;
SELECT asyncjobs.postpone(:j, now() + interval '2 hours'), pg_temp.st(:j);
SELECT asyncjobs.pause(:j), pg_temp.st(:j);
SELECT asyncjobs.cancel(:j), pg_temp.st(:j);

-- Locked: InProgress -> Pausing -> Canceling (cancel wins)
SELECT asyncjobs.enqueue('held') AS j \gset
SELECT pg_temp.take('held') = ARRAY[:j::bigint] AS taken, pg_temp.st(:j);
SELECT pg_temp.try(format('SELECT asyncjobs.postpone(%s, now())', :j));
SELECT asyncjobs.resume(:j), pg_temp.st(:j);
SELECT asyncjobs.pause(:j), pg_temp.st(:j);
SELECT asyncjobs.pause(:j), pg_temp.st(:j);
SELECT asyncjobs.cancel(:j), pg_temp.st(:j);
SELECT asyncjobs.cancel(:j), asyncjobs.pause(:j), asyncjobs.resume(:j), pg_temp.st(:j);
-- what the worker (or lease expiry) does with a Canceling job
SELECT asyncjobs._control_outcome(:j, NULL), pg_temp.st(:j);
-- ... and with a Pausing one: Paused, ready to run again when resumed
SELECT asyncjobs.enqueue('held') AS j \gset
SELECT pg_temp.take('held') = ARRAY[:j::bigint] AS taken;
SELECT asyncjobs.pause(:j), asyncjobs._control_outcome(:j, NULL), pg_temp.st(:j);
SELECT asyncjobs.resume(:j), pg_temp.st(:j);
SELECT asyncjobs.cancel(:j);

-- Completed jobs never change; retry brings Failed and Canceled back
SELECT asyncjobs.enqueue('held') AS ok_job, asyncjobs.enqueue('held') AS bad_job \gset
SELECT pg_temp.take('held') = ARRAY[:ok_job, :bad_job]::bigint[] AS taken;
SELECT asyncjobs._finish(:ok_job, 30::smallint, '"done"', NULL, 0.1, NULL, NULL, NULL, NULL);
SELECT asyncjobs._finish(:bad_job, 31::smallint, NULL, NULL, 0.1, 'XX000', 'ERROR:  boom', 'boom',
                         jsonb_build_object('attempt', 1, 'outcome', 'failed'));
SELECT asyncjobs.cancel(:ok_job), asyncjobs.pause(:ok_job), asyncjobs.resume(:ok_job),
       asyncjobs.postpone(:ok_job, now()), pg_temp.st(:ok_job);
SELECT pg_temp.try(format('SELECT asyncjobs.retry(%s)', :ok_job));
SELECT asyncjobs.cancel(:bad_job), pg_temp.st(:bad_job);
SELECT asyncjobs.retry(:bad_job) = :bad_job AS same_id, pg_temp.st(:bad_job);
SELECT retrycount, errorcode, jsonb_array_length(attempts) AS attempts_kept
  FROM asyncjobs.asyncoperation WHERE asyncoperationid = :bad_job;
SELECT pg_temp.try(format('SELECT asyncjobs.retry(%s)', :bad_job));
SELECT asyncjobs.cancel(:bad_job), pg_temp.st(:bad_job);
SELECT asyncjobs.retry(:bad_job) = :bad_job AS canceled_retried, pg_temp.st(:bad_job);
SELECT asyncjobs.cancel(:bad_job);

-- Dependency tokens: one at a time, in id order; a paused one holds back the rest
SELECT asyncjobs.enqueue('held', dependency_token => 'order-7') AS d1,
       asyncjobs.enqueue('held', dependency_token => 'order-7') AS d2,
       asyncjobs.enqueue('held', dependency_token => 'order-7') AS d3,
       asyncjobs.enqueue('held', dependency_token => 'other') AS d4 \gset
SELECT pg_temp.st(:d1), pg_temp.st(:d2), pg_temp.st(:d3), pg_temp.st(:d4);
SELECT pg_temp.take('held') = ARRAY[:d1, :d4]::bigint[] AS first_of_each_token;
SELECT pg_temp.take('held') = '{}' AS rest_wait;
SELECT asyncjobs._finish(:d1, 30::smallint, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
SELECT asyncjobs.pause(:d2);
SELECT pg_temp.take('held') = '{}' AS paused_holds_back;
SELECT asyncjobs.resume(:d2), pg_temp.st(:d2);
SELECT pg_temp.take('held') = ARRAY[:d2]::bigint[] AS next_in_line;
SELECT asyncjobs.cancel(:d2), asyncjobs.cancel(:d3), asyncjobs.cancel(:d4);
SELECT asyncjobs._control_outcome(:d2, NULL), asyncjobs._control_outcome(:d4, NULL);

-- Dedupe keys: one active job per operation and key
SELECT asyncjobs.enqueue('held', dedupe_key => 'nightly') AS k1 \gset
SELECT asyncjobs.enqueue('held', dedupe_key => 'nightly') = :k1 AS same_job;
SELECT asyncjobs.enqueue_sql('SELECT 1', dedupe_key => 'nightly', postpone_until => now() + interval '1 day') <> :k1 AS other_operation;
SELECT count(*) FROM asyncjobs.job WHERE dedupekey = 'nightly';
SELECT asyncjobs.cancel(:k1);
SELECT asyncjobs.enqueue('held', dedupe_key => 'nightly') <> :k1 AS new_job_after_completion;
SELECT asyncjobs.cancel(asyncoperationid) FROM asyncjobs.job WHERE dedupekey = 'nightly';

-- Recurrence: when an occurrence completes, the next one is queued
SELECT asyncjobs.enqueue('held', '{"report": "hourly"}', recurrence => 'FREQ=HOURLY;INTERVAL=2',
                         postpone_until => '2020-01-01 00:00+00') AS r1 \gset
SELECT recurrencepattern, recurrencestarttime = '2020-01-01 00:00+00' AS starts,
       pg_temp.st(:r1) FROM asyncjobs.asyncoperation WHERE asyncoperationid = :r1;
SELECT pg_temp.take('held') = ARRAY[:r1::bigint] AS taken;
SELECT asyncjobs._finish(:r1, 30::smallint, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
SELECT asyncoperationid > :r1 AS new_id, pg_temp.st(asyncoperationid), data,
       postponeuntil > now() AND postponeuntil <= now() + interval '2 hours'
         AND extract(epoch FROM postponeuntil - recurrencestarttime)::bigint % 7200 = 0 AS next_time,
       recurrencepattern
  FROM asyncjobs.job WHERE messagename = 'held' AND recurrencepattern IS NOT NULL;
-- canceling an occurrence ends the series
SELECT asyncjobs.cancel(asyncoperationid) FROM asyncjobs.job
 WHERE messagename = 'held' AND recurrencepattern IS NOT NULL;
SELECT count(*) AS left_in_series FROM asyncjobs.job WHERE recurrencepattern IS NOT NULL;

-- Whole operations
SELECT asyncjobs.enqueue('held') AS j \gset
SELECT asyncjobs.pause_operation('held');
SELECT paused FROM asyncjobs.operation_type WHERE name = 'held';
SELECT pg_temp.take('held') = '{}' AS nothing_while_paused;
SELECT asyncjobs.resume_operation('held');
SELECT pg_temp.take('held') = ARRAY[:j::bigint] AS taken_after_resume;
SELECT asyncjobs.cancel(:j), asyncjobs._control_outcome(:j, NULL);

-- Only the owner (or a role with its privileges) manages a job
CREATE ROLE regress_ctl_owner;
CREATE ROLE regress_ctl_other;
CREATE ROLE regress_ctl_member IN ROLE regress_ctl_owner;
SET ROLE regress_ctl_owner;
SELECT asyncjobs.register_operation('owned');
SELECT asyncjobs.enqueue('owned') AS oj \gset
SET ROLE regress_ctl_other;
SELECT pg_temp.try(format('SELECT asyncjobs.cancel(%s)', :oj));
SELECT pg_temp.try(format('SELECT asyncjobs.pause(%s)', :oj));
SELECT pg_temp.try(format('SELECT asyncjobs.postpone(%s, now())', :oj));
SELECT pg_temp.try($$SELECT asyncjobs.pause_operation('owned')$$);
SET ROLE regress_ctl_member;
SELECT asyncjobs.pause(:oj), asyncjobs.cancel(:oj);
SELECT pg_temp.try(format('SELECT asyncjobs.retry(%s)', :oj));
RESET ROLE;
SET ROLE regress_ctl_other;
SELECT pg_temp.try(format('SELECT asyncjobs.retry(%s)', :oj));
RESET ROLE;
SELECT asyncjobs.cancel(:oj);
DELETE FROM asyncjobs.operation_type WHERE name = 'owned';
DROP ROLE regress_ctl_member, regress_ctl_other, regress_ctl_owner;
