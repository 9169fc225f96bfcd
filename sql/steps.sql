--
-- Steps (Dataverse's asynchronous plug-in steps): register_step and
-- unregister_step, the jobs a committed INSERT / UPDATE / DELETE enqueues,
-- and the per-row limit (more than 16 runs of one step for one row within
-- an hour are canceled).  The operations here have no handler, so the
-- workers leave their jobs alone and the output does not depend on them
-- (test/t/020_steps.pl runs steps end to end).
--
-- quiet whether or not an earlier test created the extension
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS asyncjobs;
RESET client_min_messages;

-- runs a statement, returns "ok" or "SQLSTATE: message" (and the HINT)
CREATE FUNCTION pg_temp.try(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    h text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM
        || CASE WHEN h <> '' THEN E'\nHINT: ' || h ELSE '' END;
END
$$;

CREATE ROLE regress_steps_owner;
CREATE ROLE regress_steps_writer;
CREATE ROLE regress_steps_other;
GRANT CREATE ON SCHEMA public TO regress_steps_owner;

-- the public functions, and their privileges
SELECT p.oid::regprocedure AS function, p.prosecdef, p.proconfig,
       has_function_privilege('regress_steps_other', p.oid, 'EXECUTE') AS public
  FROM pg_proc p
 WHERE p.pronamespace = 'asyncjobs'::regnamespace
   AND p.proname ~ '^_*(register_|unregister_)?step'
 ORDER BY p.proname;
SELECT has_table_privilege('regress_steps_other', 'asyncjobs.step', 'SELECT') AS read_steps,
       has_table_privilege('regress_steps_other', 'asyncjobs.step', 'INSERT') AS write_steps;

SET ROLE regress_steps_owner;
CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric);
CREATE TABLE lines (order_id int, line int, item text, PRIMARY KEY (order_id, line));
CREATE TABLE notes (body text);
CREATE VIEW orders_v AS SELECT * FROM orders;
CREATE SEQUENCE some_seq;
CREATE TEMP TABLE scratch (id int PRIMARY KEY);
GRANT SELECT, INSERT, UPDATE, DELETE ON orders, lines, notes TO regress_steps_writer;
SELECT asyncjobs.register_operation('steps_audit');
SELECT asyncjobs.register_operation('steps_index');
CREATE FUNCTION steps_private(data jsonb) RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION steps_private(jsonb) FROM PUBLIC;
SELECT asyncjobs.register_operation('steps_private', 'steps_private(jsonb)');
RESET ROLE;

--
-- Bad input: clear errors, nothing registered
--
SET ROLE regress_steps_owner;
SELECT pg_temp.try($$SELECT asyncjobs.register_step(NULL, 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders', NULL, 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders', 'INSERT', NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders', 'TRUNCATE', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders', '', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders', 'INSERT', 'no_such_operation')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders', 'INSERT', 'sql')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('no_such_table', 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders_v', 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('some_seq', 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('scratch', 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.register_step('asyncjobs.job', 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.unregister_step('orders', 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.unregister_step('orders', 'DROP', 'steps_audit')$$);
RESET ROLE;
-- not the table's owner
SET ROLE regress_steps_writer;
SELECT pg_temp.try($$SELECT asyncjobs.register_step('orders', 'INSERT', 'steps_audit')$$);
SELECT pg_temp.try($$SELECT asyncjobs.unregister_step('orders', 'INSERT', 'steps_audit')$$);
RESET ROLE;
-- the owner may not execute the handler of the operation
GRANT EXECUTE ON FUNCTION steps_private(jsonb) TO regress_steps_writer;
CREATE TABLE private_t (id int PRIMARY KEY);
ALTER TABLE private_t OWNER TO regress_steps_other;
SET ROLE regress_steps_other;
SELECT pg_temp.try($$SELECT asyncjobs.register_step('private_t', 'INSERT', 'steps_private')$$);
RESET ROLE;
SELECT count(*) AS registered FROM asyncjobs.step;
-- nobody writes the registrations but the extension
SET ROLE regress_steps_owner;
SELECT pg_temp.try($$INSERT INTO asyncjobs.step VALUES ('orders', 'INSERT', 'steps_audit', 'regress_steps_owner')$$);
RESET ROLE;

--
-- Registering: one trigger per (table, event); the event is case-insensitive
-- and registering twice is fine
--
SET ROLE regress_steps_owner;
SELECT asyncjobs.register_step('orders', 'insert', 'steps_audit');
SELECT asyncjobs.register_step('orders', 'Update', 'steps_audit');
SELECT asyncjobs.register_step('orders', 'DELETE', 'steps_audit');
SELECT asyncjobs.register_step('orders', 'INSERT', 'steps_audit');
SELECT asyncjobs.register_step('orders', 'INSERT', 'steps_index');
SELECT asyncjobs.register_step('lines', 'INSERT', 'steps_audit');
SELECT asyncjobs.register_step('notes', 'INSERT', 'steps_audit');
RESET ROLE;
SELECT target, event, operation, owner FROM asyncjobs.step ORDER BY 1, 2, 3;
SELECT tgrelid::regclass, tgname, tgfoid::regproc, tgtype, tgenabled, tgnargs
  FROM pg_trigger WHERE tgname LIKE 'asyncjobs_step_%' ORDER BY 1, 2;

--
-- Writing: one job per row and operation, owned by the writing role
--
SELECT coalesce(max(asyncoperationid), 0) AS before FROM asyncjobs.asyncoperation \gset
SET ROLE regress_steps_writer;
INSERT INTO orders VALUES (1, 'ada', 12.50), (2, 'bob', 3);
UPDATE orders SET total = 13 WHERE id = 1;
UPDATE orders SET total = total WHERE id = 99;     -- no row, no job
DELETE FROM orders WHERE id = 2;
INSERT INTO lines VALUES (1, 1, 'tea'), (1, 2, 'milk');
INSERT INTO notes VALUES ('no key here');
RESET ROLE;
SELECT row_number() OVER (ORDER BY asyncoperationid) AS n, name, messagename,
       ownerid, statecode, statuscode, regardingobjectid, depth, data
  FROM asyncjobs.asyncoperation
 WHERE asyncoperationid > :before AND messagename LIKE 'steps\_%'
 ORDER BY asyncoperationid;

-- a rolled-back write, or a rolled-back savepoint, enqueues nothing
SELECT coalesce(max(asyncoperationid), 0) AS before FROM asyncjobs.asyncoperation \gset
BEGIN;
SET LOCAL ROLE regress_steps_writer;
INSERT INTO orders VALUES (3, 'cy', 1);
ROLLBACK;
BEGIN;
SET LOCAL ROLE regress_steps_writer;
INSERT INTO orders VALUES (4, 'di', 1);
SAVEPOINT s;
INSERT INTO orders VALUES (5, 'ed', 1);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT name, regardingobjectid FROM asyncjobs.asyncoperation
 WHERE asyncoperationid > :before AND messagename LIKE 'steps\_%'
 ORDER BY asyncoperationid;

-- the writing role must be allowed to enqueue: its write fails otherwise
SET ROLE regress_steps_owner;
CREATE TABLE guarded (id int PRIMARY KEY);
GRANT INSERT ON guarded TO regress_steps_writer, regress_steps_other;
RESET ROLE;
GRANT EXECUTE ON FUNCTION steps_private(jsonb) TO regress_steps_owner;
SET ROLE regress_steps_owner;
SELECT asyncjobs.register_step('guarded', 'INSERT', 'steps_private');
RESET ROLE;
SET ROLE regress_steps_other;
SELECT pg_temp.try($$INSERT INTO guarded VALUES (1)$$);
RESET ROLE;
SET ROLE regress_steps_writer;
INSERT INTO guarded VALUES (2);
RESET ROLE;
SELECT ownerid, regardingobjectid FROM asyncjobs.asyncoperation
 WHERE messagename = 'steps_private' ORDER BY asyncoperationid;

--
-- Partitioned tables: the step fires for the rows of every partition, with
-- the partitioned table's name
--
SET ROLE regress_steps_owner;
CREATE TABLE events (day int, seq int, what text, PRIMARY KEY (day, seq))
    PARTITION BY RANGE (day);
CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (1) TO (2);
SELECT asyncjobs.register_step('events', 'INSERT', 'steps_audit');
CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (2) TO (3);
SELECT coalesce(max(asyncoperationid), 0) AS before FROM asyncjobs.asyncoperation \gset
INSERT INTO events VALUES (1, 1, 'a'), (2, 1, 'b');
SELECT name, regardingobjectid, data FROM asyncjobs.asyncoperation
 WHERE asyncoperationid > :before AND messagename LIKE 'steps\_%'
 ORDER BY asyncoperationid;
-- a partition cannot have steps of its own on an event its parent has
SELECT pg_temp.try($$SELECT asyncjobs.register_step('events_1', 'INSERT', 'steps_index')$$);
SELECT asyncjobs.register_step('events_1', 'DELETE', 'steps_index');
SELECT pg_temp.try($$SELECT asyncjobs.register_step('events', 'DELETE', 'steps_index')$$);
SELECT asyncjobs.unregister_step('events_1', 'DELETE', 'steps_index');
RESET ROLE;

--
-- The per-row limit: the 17th and later jobs of a step for one row within
-- an hour are recorded, and Canceled at once.  Row 4 already had a job of
-- steps_audit (its INSERT above): of 18 updates, the last 3 are canceled.
--
SELECT coalesce(max(asyncoperationid), 0) AS before FROM asyncjobs.asyncoperation \gset
SET ROLE regress_steps_writer;
DO $$
BEGIN
    FOR i IN 1..18 LOOP
        UPDATE orders SET total = i WHERE id = 4;
    END LOOP;
    UPDATE orders SET total = 0 WHERE id = 1;
END
$$;
RESET ROLE;
SELECT messagename, regardingobjectid, statecode, statuscode, errorcode, count(*)
  FROM asyncjobs.asyncoperation
 WHERE asyncoperationid > :before AND messagename LIKE 'steps\_%'
 GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4;
SELECT ownerid, friendlymessage, message, attempts
  FROM asyncjobs.asyncoperation
 WHERE asyncoperationid > :before AND messagename LIKE 'steps\_%' AND statuscode = 32
 ORDER BY asyncoperationid LIMIT 1;

-- _step_fired, the function behind the limit, cancels only jobs the
-- caller may manage, and only when the limit is passed
SELECT asyncoperationid AS runaway FROM asyncjobs.job
 WHERE messagename = 'steps_audit' AND regardingobjectid = '4'
 ORDER BY asyncoperationid DESC LIMIT 1 \gset
SELECT asyncoperationid AS fine FROM asyncjobs.job
 WHERE messagename = 'steps_audit' AND regardingobjectid = '1'
 ORDER BY asyncoperationid DESC LIMIT 1 \gset
SET ROLE regress_steps_other;
SELECT regexp_replace(pg_temp.try(format('SELECT asyncjobs._step_fired(%s)', :fine)),
                      'job \d+', 'job N') AS try;
SELECT pg_temp.try($$SELECT asyncjobs._step_fired(NULL)$$);
SELECT pg_temp.try($$SELECT asyncjobs._step_fired(-1)$$);
SELECT pg_temp.try($$SELECT asyncjobs.__step_fired_impl('regress_steps_writer', 1)$$);
RESET ROLE;
SET ROLE regress_steps_writer;
SELECT asyncjobs._step_fired(:fine) AS canceled_fine;
RESET ROLE;
SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = :fine;

--
-- Unregistering: the trigger goes with the event's last step
--
SET ROLE regress_steps_owner;
SELECT asyncjobs.unregister_step('orders', 'insert', 'steps_index');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'orders'::regclass ORDER BY 1;
SELECT asyncjobs.unregister_step('orders', 'INSERT', 'steps_audit');
SELECT asyncjobs.unregister_step('orders', 'DELETE', 'steps_audit');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'orders'::regclass ORDER BY 1;
SELECT pg_temp.try($$SELECT asyncjobs.unregister_step('orders', 'INSERT', 'steps_audit')$$);
SELECT coalesce(max(asyncoperationid), 0) AS before FROM asyncjobs.asyncoperation \gset
INSERT INTO orders VALUES (6, 'fay', 1);
DELETE FROM orders WHERE id = 6;
SELECT count(*) AS jobs FROM asyncjobs.asyncoperation
 WHERE asyncoperationid > :before AND messagename LIKE 'steps\_%';
-- registering again brings back a trigger someone dropped
DROP TRIGGER asyncjobs_step_update ON orders;
SELECT asyncjobs.register_step('orders', 'UPDATE', 'steps_audit');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'orders'::regclass ORDER BY 1;
RESET ROLE;

-- a dropped table takes its steps with it
SELECT count(*) AS lines_steps FROM asyncjobs.step WHERE target = 'lines'::regclass;
SET ROLE regress_steps_owner;
DROP TABLE lines;
RESET ROLE;
SELECT target, event, operation FROM asyncjobs.step ORDER BY 1, 2, 3;

-- clean up: no job left waiting, no step, no role
SELECT count(*) > 0 AS canceled FROM (
    SELECT asyncjobs.cancel(asyncoperationid) FROM asyncjobs.job
     WHERE messagename LIKE 'steps\_%') c;
DROP TABLE orders, notes, guarded, events, private_t, scratch CASCADE;
DROP SEQUENCE some_seq;
DROP FUNCTION steps_private(jsonb);
SELECT count(*) AS steps_left FROM asyncjobs.step;
DELETE FROM asyncjobs.operation_type WHERE name LIKE 'steps\_%';
REVOKE CREATE ON SCHEMA public FROM regress_steps_owner;
DROP ROLE regress_steps_owner, regress_steps_writer, regress_steps_other;
