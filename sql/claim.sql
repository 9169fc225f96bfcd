--
-- The claim's choice of jobs (src/claim.c), through
-- asyncjobs._claim_locked(n, operations, external, after_ops,
-- after_priority, after_runafter, after_id, fused), which asyncjobs._claim
-- runs for every claim and the workers run directly for their fused ones:
-- priority first, operations interleaved within a priority, the first n;
-- watermarks; ready jobs only (not postponed, not paused, not behind an
-- older job of the same dependency token); max_concurrency.
--
-- The operations here have no handler: they are claimed as external
-- operations (external => true), which the background workers leave alone.
-- Each claim runs in a transaction that is rolled back: it only locks.
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

SELECT asyncjobs.register_operation('cl_a');
SELECT asyncjobs.register_operation('cl_b');
SELECT asyncjobs.register_operation('cl_c', max_concurrency => 1);

SELECT asyncjobs.enqueue('cl_a', name => 'a1') > 0 AS a1;
SELECT asyncjobs.enqueue('cl_a', name => 'a2') > 0 AS a2;
SELECT asyncjobs.enqueue('cl_a', name => 'a3') > 0 AS a3;
SELECT asyncjobs.enqueue('cl_b', name => 'b1') > 0 AS b1;
SELECT asyncjobs.enqueue('cl_b', name => 'b2') > 0 AS b2;
-- a higher priority (lower number) comes first, whatever its operation
SELECT asyncjobs.enqueue('cl_b', name => 'b0', priority => -1) > 0 AS b0;
-- not ready: postponed, or behind an older job of its dependency token
SELECT asyncjobs.enqueue('cl_a', name => 'a_later',
                         postpone_until => now() + interval '1 hour') > 0 AS a_later;
SELECT asyncjobs.enqueue('cl_b', name => 'b_first', dependency_token => 'cl_t') > 0 AS b_first;
SELECT asyncjobs.enqueue('cl_b', name => 'b_second', dependency_token => 'cl_t') > 0 AS b_second;

CREATE FUNCTION pg_temp.claim(n int, ops text[], fused boolean DEFAULT false,
                              after_ops text[] DEFAULT NULL,
                              after_priority int[] DEFAULT NULL,
                              after_runafter timestamptz[] DEFAULT NULL,
                              after_id bigint[] DEFAULT NULL)
RETURNS TABLE (ord bigint, name text, operation text, priority int,
               fused boolean, dependent boolean)
LANGUAGE sql AS $$
    SELECT c.k, j.name, c.messagename, c.priority, c.fused, c.dependent
      FROM asyncjobs._claim_locked(n, ops, true, after_ops, after_priority,
                                   after_runafter, after_id, fused)
           WITH ORDINALITY AS c(asyncoperationid, messagename, operationtype,
                                ownerid, data, retrycount, maxretries, handler,
                                timeout_ms, retry_delay_ms, retry_delay_max_ms,
                                leasetoken, leaseexpires, priority, runafter,
                                tuple_id, fused, dependent, k)
      JOIN asyncjobs.job j ON j.asyncoperationid = c.asyncoperationid
     ORDER BY c.k
$$;

-- priority, then round robin across operations, then age
BEGIN;
SELECT * FROM pg_temp.claim(20, ARRAY['cl_a', 'cl_b']);
ROLLBACK;
-- the first n of that order
BEGIN;
SELECT * FROM pg_temp.claim(3, ARRAY['cl_a', 'cl_b']);
ROLLBACK;
-- one operation; none at all
BEGIN;
SELECT * FROM pg_temp.claim(20, ARRAY['cl_a']);
SELECT count(*) FROM pg_temp.claim(0, ARRAY['cl_a', 'cl_b']);
ROLLBACK;

-- a watermark: cl_a's jobs after a1's claim key only; cl_b, without one,
-- from its start
BEGIN;
SELECT c.* FROM asyncjobs.job j,
       pg_temp.claim(20, ARRAY['cl_a', 'cl_b'], false, ARRAY['cl_a'],
                     ARRAY[j.priority], ARRAY[j.runafter],
                     ARRAY[j.asyncoperationid]) c
 WHERE j.name = 'a1';
ROLLBACK;

-- a paused operation offers nothing
SELECT asyncjobs.pause_operation('cl_b');
BEGIN;
SELECT * FROM pg_temp.claim(20, ARRAY['cl_a', 'cl_b']);
ROLLBACK;
SELECT asyncjobs.resume_operation('cl_b');

-- max_concurrency: at most its room (1) when the claim marks its jobs; a
-- fused claim (which does not) takes none at all while a capped operation
-- can be claimed
SELECT asyncjobs.enqueue('cl_c', name => 'c1') > 0 AS c1;
SELECT asyncjobs.enqueue('cl_c', name => 'c2') > 0 AS c2;
BEGIN;
SELECT * FROM pg_temp.claim(20, ARRAY['cl_a', 'cl_c']);
ROLLBACK;
BEGIN;
SELECT count(*) FROM pg_temp.claim(20, ARRAY['cl_a', 'cl_c'], true);
SELECT * FROM pg_temp.claim(2, ARRAY['cl_a'], true);
ROLLBACK;
-- with c1 InProgress, the cap is reached: cl_c offers nothing
BEGIN;
SELECT count(*) AS claimed
  FROM asyncjobs._claim(NULL, 'cl', 1, ARRAY['cl_c'], true, '1 minute');
SELECT * FROM pg_temp.claim(20, ARRAY['cl_c']);
ROLLBACK;

-- asyncjobs._claim returns the same choice, marked InProgress
BEGIN;
CREATE TEMP TABLE cl_taken ON COMMIT DROP AS
SELECT c.asyncoperationid, c.ordinality, c.fused
  FROM asyncjobs._claim(NULL, 'cl', 3, ARRAY['cl_a', 'cl_b'], true, '1 minute')
       WITH ORDINALITY AS c;
SELECT j.name, j.statecode, t.fused
  FROM cl_taken t JOIN asyncjobs.job j USING (asyncoperationid)
 ORDER BY t.ordinality;
ROLLBACK;

DELETE FROM asyncjobs.job WHERE messagename IN ('cl_a', 'cl_b', 'cl_c');
DELETE FROM asyncjobs.operation_type WHERE name IN ('cl_a', 'cl_b', 'cl_c');
