--
-- enqueue_many(operation, data jsonb[], <the options of enqueue>): one job
-- per element, in one statement, ids in the order of data.
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

CREATE FUNCTION pg_temp.try(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- an operation without handler: the background workers leave it alone
SELECT asyncjobs.register_operation('many_ext', priority => 3);

CREATE TEMP TABLE ids AS
SELECT row_number() OVER () AS pos, id
  FROM asyncjobs.enqueue_many('many_ext',
         ARRAY['{"n": 1}', '{"n": 2}', '{"n": 3}', '{"n": 4}']::jsonb[]) AS id;
-- ids ascend with the data, each job got its own element
SELECT i.pos, j.data->>'n' AS n, j.statuscode, j.priority, j.name, j.ownerid = current_user::regrole AS mine
  FROM ids i JOIN asyncjobs.asyncoperation j ON j.asyncoperationid = i.id
 ORDER BY i.id;
SELECT count(DISTINCT j.correlationid) AS correlations
  FROM ids i JOIN asyncjobs.asyncoperation j ON j.asyncoperationid = i.id;

-- the options apply to every job
CREATE TEMP TABLE later AS
SELECT id FROM asyncjobs.enqueue_many('many_ext', ARRAY['{}', '{}']::jsonb[], name => 'later',
                                      priority => 9, postpone_until => now() + interval '1 hour',
                                      max_retries => 1, regarding => 'order 7') AS id;
SELECT count(*) AS postponed, min(statuscode), max(statuscode), bool_and(name = 'later'),
       bool_and(priority = 9), bool_and(maxretries = 1), bool_and(regardingobjectid = 'order 7')
  FROM asyncjobs.asyncoperation WHERE asyncoperationid IN (SELECT id FROM later);
-- one dependency token: the first may run, the others wait behind it
CREATE TEMP TABLE chain AS
SELECT id FROM asyncjobs.enqueue_many('many_ext', ARRAY['{}', '{}', '{}']::jsonb[],
                                      dependency_token => 'many_tok') AS id;
SELECT j.statuscode, count(*)
  FROM asyncjobs.asyncoperation j WHERE j.asyncoperationid IN (SELECT id FROM chain)
 GROUP BY 1 ORDER BY 1;
SELECT j.statuscode AS first_of_chain FROM asyncjobs.asyncoperation j
 WHERE j.asyncoperationid = (SELECT min(id) FROM chain);
-- recurrence for each
CREATE TEMP TABLE recurring AS
SELECT id FROM asyncjobs.enqueue_many('many_ext', ARRAY['{}', '{}']::jsonb[],
                                      recurrence => 'FREQ=DAILY') AS id;
SELECT count(*) AS recurring FROM asyncjobs.asyncoperation
 WHERE asyncoperationid IN (SELECT id FROM recurring) AND recurrencepattern = 'FREQ=DAILY';
-- SQL jobs, each with its command
CREATE TEMP TABLE sqljobs AS
SELECT id FROM asyncjobs.enqueue_many('sql', ARRAY['{"command": "SELECT 1"}',
                                                   '{"command": "SELECT 2"}']::jsonb[]) AS id;
SELECT array_agg(data->>'command' ORDER BY asyncoperationid) AS sql_jobs
  FROM asyncjobs.asyncoperation WHERE asyncoperationid IN (SELECT id FROM sqljobs);
-- nothing for an empty array
SELECT count(*) AS none FROM asyncjobs.enqueue_many('many_ext', '{}'::jsonb[]);

-- bad input: an error, and no job
SELECT count(*) AS before FROM asyncjobs.asyncoperation \gset
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many(NULL, ARRAY['{}']::jsonb[])$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_ext', NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_ext', ARRAY['{}', NULL]::jsonb[])$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_ext', ARRAY[['{}'], ['{}']]::jsonb[])$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_nope', ARRAY['{}']::jsonb[])$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_ext', ARRAY['{}', '{}']::jsonb[], dedupe_key => 'k')$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('sql', ARRAY['{"command": "SELECT 1"}', '{"command": "SELEC 2"}']::jsonb[])$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('sql', ARRAY['{"command": "SELECT 1"}', '{}']::jsonb[])$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_ext', ARRAY['{}', jsonb_build_object('x', repeat('x', 2000000))]::jsonb[])$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_ext', ARRAY['{}']::jsonb[], max_retries => -1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.enqueue_many('many_ext', ARRAY['{}']::jsonb[], recurrence => 'FREQ=SOMETIMES')$$);
SELECT count(*) - :before AS new_jobs FROM asyncjobs.asyncoperation;
-- a single element with a dedupe key behaves as enqueue()
SELECT (SELECT asyncjobs.enqueue_many('many_ext', ARRAY['{}']::jsonb[], dedupe_key => 'one'))
     = (SELECT asyncjobs.enqueue('many_ext', dedupe_key => 'one')) AS deduped;

-- in a set-based INSERT ... SELECT, as an application would
CREATE TEMP TABLE orders (id int, total numeric);
INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 50) g;
SELECT count(*) AS queued FROM asyncjobs.enqueue_many('many_ext',
         (SELECT array_agg(jsonb_build_object('order', id, 'total', total) ORDER BY id) FROM orders));

-- more jobs than one batch of the heap insert (64 rows): every one, ids in
-- the order of the data, each found through the indexes
CREATE TEMP TABLE big AS
SELECT row_number() OVER () AS pos, id
  FROM asyncjobs.enqueue_many('many_ext',
         (SELECT array_agg(jsonb_build_object('n', g) ORDER BY g) FROM generate_series(1, 150) g)) AS id;
SELECT count(*) AS jobs, count(DISTINCT j.correlationid) AS correlations,
       bool_and(j.data->>'n' = i.pos::text) AS each_its_data
  FROM big i JOIN asyncjobs.job j ON j.asyncoperationid = i.id;
SELECT bool_and(step > 0) AS ascending
  FROM (SELECT id - lag(id) OVER (ORDER BY pos) AS step FROM big) s;
SET enable_seqscan = off;
SELECT count(*) AS by_claim_index FROM asyncjobs.job
 WHERE messagename = 'many_ext' AND statuscode IN (0, 10, 11) AND priority = 3
   AND asyncoperationid >= (SELECT min(id) FROM big);
SELECT count(*) AS by_key FROM asyncjobs.job WHERE asyncoperationid IN (SELECT id FROM big);
RESET enable_seqscan;

SELECT asyncjobs.cancel(asyncoperationid) IS NOT NULL AS canceled, count(*)
  FROM asyncjobs.job WHERE messagename = 'many_ext' GROUP BY 1;
DELETE FROM asyncjobs.operation_type WHERE name = 'many_ext';
