/* asyncjobs--0.1.sql, built from the files in sql/parts, in name order (see Makefile) */
/* sql/parts/00_core.sql: tables, views, the workers' functions, the core API */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION asyncjobs" to load this file. \quit

-- The extension refuses to install unless its library was preloaded: the
-- background workers and the shared memory they use exist only then.
CREATE FUNCTION asyncjobs._check_preloaded()
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'asyncjobs_check_preloaded';

SELECT asyncjobs._check_preloaded();

--------------------------------------------------------------------------
-- Operation types
--------------------------------------------------------------------------

CREATE TABLE asyncjobs.operation_type (
    name            text        PRIMARY KEY,
    operationtype   int         NOT NULL DEFAULT 1,
    handler         regprocedure,
    max_retries     int         NOT NULL DEFAULT 5 CHECK (max_retries >= 0),
    retry_delay     interval    NOT NULL DEFAULT '10 seconds'
                                CHECK (retry_delay > '0'::interval),
    retry_delay_max interval    NOT NULL DEFAULT '1 hour'
                                CHECK (retry_delay_max > '0'::interval),
    timeout         interval    NOT NULL DEFAULT '2 minutes'
                                CHECK (timeout > '0'::interval),
    max_concurrency int         CHECK (max_concurrency > 0),
    priority        int         NOT NULL DEFAULT 0,
    paused          boolean     NOT NULL DEFAULT false,
    builtin         boolean     NOT NULL DEFAULT false,
    owner           regrole     NOT NULL DEFAULT current_user::regrole,
    createdon       timestamptz NOT NULL DEFAULT now(),
    modifiedon      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE asyncjobs.operation_type IS
'registered operations: what a job of each name runs and how it is retried';

INSERT INTO asyncjobs.operation_type (name, operationtype, builtin)
VALUES ('sql', 54, true);

-- enqueue keeps the operation types it looked up (src/api.c,
-- lookup_operation); any write to this table sends a relcache invalidation
-- of it, which empties that cache in every session.  ALWAYS: also under
-- session_replication_role = replica (logical replication, restores).
CREATE FUNCTION asyncjobs._operation_type_changed()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_operation_type_changed';

CREATE TRIGGER operation_type_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON asyncjobs.operation_type
    FOR EACH STATEMENT EXECUTE FUNCTION asyncjobs._operation_type_changed();
ALTER TABLE asyncjobs.operation_type ENABLE ALWAYS TRIGGER operation_type_changed;

--------------------------------------------------------------------------
-- Jobs: active table, partitioned history, and the asyncoperation view
--------------------------------------------------------------------------

CREATE SEQUENCE asyncjobs.asyncoperation_id_seq;

-- Jobs that are not completed (statecode 0, 1, 2).  Small, hot and
-- updated in place: fillfactor leaves room for HOT updates.
CREATE TABLE asyncjobs.job (
    asyncoperationid    bigint      PRIMARY KEY
                        DEFAULT nextval('asyncjobs.asyncoperation_id_seq'),
    name                text        NOT NULL,
    operationtype       int         NOT NULL,
    messagename         text        NOT NULL,
    statecode           smallint    NOT NULL DEFAULT 0,
    statuscode          smallint    NOT NULL DEFAULT 0,
    ownerid             regrole     NOT NULL,
    createdon           timestamptz NOT NULL DEFAULT now(),
    modifiedon          timestamptz NOT NULL DEFAULT now(),
    startedon           timestamptz,
    postponeuntil       timestamptz,
    executiontimespan   double precision,
    retrycount          int         NOT NULL DEFAULT 0,
    maxretries          int         NOT NULL,
    errorcode           text,
    message             text,
    friendlymessage     text,
    data                jsonb       NOT NULL DEFAULT '{}',
    priority            int         NOT NULL DEFAULT 0,
    depth               int         NOT NULL DEFAULT 1,
    correlationid       uuid        NOT NULL,
    correlationupdatedtime timestamptz NOT NULL DEFAULT now(),
    dependencytoken     text,
    dedupekey           text,
    recurrencepattern   text,
    recurrencestarttime timestamptz,
    regardingobjectid   text,
    hostid              text,
    parentid            bigint,
    -- internal: when the job becomes eligible, which worker holds it, and
    -- the outcome of every attempt so far
    runafter            timestamptz NOT NULL DEFAULT now(),
    lockedby            bigint,
    attempts            jsonb       NOT NULL DEFAULT '[]',
    -- internal: the lease of an external worker (asyncjobs.claim)
    leasetoken          uuid,
    leaseexpires        timestamptz
) WITH (fillfactor = 70);
-- No CHECK constraints: only the extension's functions write these tables
-- (PUBLIC has no rights on them), and a CHECK costs every INSERT and UPDATE
-- a parse of its expression.  The state pairs are those of asyncjobs.status.

COMMENT ON TABLE asyncjobs.job IS
'jobs that are not completed; query asyncjobs.asyncoperation instead';

-- The claim path reads only this index: per operation, the jobs that may
-- run, in claim order.
CREATE INDEX job_claim_idx
    ON asyncjobs.job (messagename, priority, runafter, asyncoperationid)
    WHERE statuscode IN (0, 10, 11);
-- Jobs sharing a dependency token run one at a time, in id order.
CREATE INDEX job_dependency_idx ON asyncjobs.job (dependencytoken, asyncoperationid)
    WHERE dependencytoken IS NOT NULL;
-- At most one job that is not completed per operation and dedupe key.
CREATE UNIQUE INDEX job_dedupe_idx ON asyncjobs.job (messagename, dedupekey)
    WHERE dedupekey IS NOT NULL;
-- Jobs held by workers, for requeueing those of a worker that died.
CREATE INDEX job_locked_idx ON asyncjobs.job (lockedby) WHERE statecode = 2;

-- Completed jobs (statecode 3), range-partitioned by completion day so
-- that retention drops whole partitions.
CREATE TABLE asyncjobs.job_history (
    asyncoperationid    bigint      NOT NULL,
    name                text        NOT NULL,
    operationtype       int         NOT NULL,
    messagename         text        NOT NULL,
    statecode           smallint    NOT NULL DEFAULT 3,
    statuscode          smallint    NOT NULL,
    ownerid             regrole     NOT NULL,
    createdon           timestamptz NOT NULL,
    modifiedon          timestamptz NOT NULL,
    startedon           timestamptz,
    completedon         timestamptz NOT NULL,
    postponeuntil       timestamptz,
    executiontimespan   double precision,
    retrycount          int         NOT NULL,
    maxretries          int         NOT NULL,
    errorcode           text,
    message             text,
    friendlymessage     text,
    data                jsonb       NOT NULL,
    result              jsonb,
    priority            int         NOT NULL,
    depth               int         NOT NULL,
    correlationid       uuid        NOT NULL,
    correlationupdatedtime timestamptz NOT NULL,
    dependencytoken     text,
    dedupekey           text,
    recurrencepattern   text,
    recurrencestarttime timestamptz,
    regardingobjectid   text,
    hostid              text,
    parentid            bigint,
    attempts            jsonb       NOT NULL
) PARTITION BY RANGE (completedon);

COMMENT ON TABLE asyncjobs.job_history IS
'completed jobs, one partition per day of completedon';

CREATE INDEX job_history_id_idx ON asyncjobs.job_history (asyncoperationid);
CREATE INDEX job_history_status_idx ON asyncjobs.job_history (statuscode, completedon);

-- Creates the daily partitions (UTC days) from yesterday to today +
-- days_ahead that do not exist yet; returns how many it created.  Each is
-- made aside and then attached, which locks the parent only in SHARE
-- UPDATE EXCLUSIVE mode: readers and writers of history are not blocked.
-- The workers call it hourly; there is no default partition, so history
-- never needs rows moved out of one.
CREATE FUNCTION asyncjobs.maintain_partitions(days_ahead int DEFAULT 7)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    today   date := (now() AT TIME ZONE 'UTC')::date;
    d       date;
    part    text;
    created int := 0;
BEGIN
    IF days_ahead IS NULL THEN
        RAISE EXCEPTION 'days_ahead must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF days_ahead < 0 OR days_ahead > 366 THEN
        RAISE EXCEPTION 'days_ahead must be between 0 and 366'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- one maintainer at a time (the workers of a database all call this)
    PERFORM pg_advisory_xact_lock(1634364018, 1);
    FOR d IN SELECT g::date FROM generate_series(today - 1, today + days_ahead,
                                                 interval '1 day') g
    LOOP
        part := 'job_history_' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('asyncjobs.' || quote_ident(part)) IS NOT NULL;
        EXECUTE format('CREATE TABLE asyncjobs.%I (LIKE asyncjobs.job_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('ALTER TABLE asyncjobs.job_history ATTACH PARTITION asyncjobs.%I
                        FOR VALUES FROM (%L) TO (%L)', part,
                       d::timestamp AT TIME ZONE 'UTC',
                       (d + 1)::timestamp AT TIME ZONE 'UTC');
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

COMMENT ON FUNCTION asyncjobs.maintain_partitions(int) IS
'creates the daily history partitions ahead of need (the workers call it)';

SELECT asyncjobs.maintain_partitions();

-- What users query and report on: every job, with Dataverse's columns.
CREATE VIEW asyncjobs.asyncoperation AS
SELECT asyncoperationid, name, operationtype, messagename, statecode,
       statuscode, ownerid, createdon, modifiedon, startedon,
       NULL::timestamptz AS completedon, postponeuntil, executiontimespan,
       retrycount, maxretries, errorcode, message, friendlymessage, data,
       NULL::jsonb AS result, priority, depth, correlationid,
       correlationupdatedtime, dependencytoken, dedupekey, recurrencepattern,
       recurrencestarttime, regardingobjectid, hostid, parentid, attempts
  FROM asyncjobs.job
UNION ALL
SELECT asyncoperationid, name, operationtype, messagename, statecode,
       statuscode, ownerid, createdon, modifiedon, startedon,
       completedon, postponeuntil, executiontimespan,
       retrycount, maxretries, errorcode, message, friendlymessage, data,
       result, priority, depth, correlationid,
       correlationupdatedtime, dependencytoken, dedupekey, recurrencepattern,
       recurrencestarttime, regardingobjectid, hostid, parentid, attempts
  FROM asyncjobs.job_history;

COMMENT ON VIEW asyncjobs.asyncoperation IS
'every job, active and completed, with Dataverse''s System Job columns';

-- Names of the state and status codes, for reports.
CREATE TABLE asyncjobs.status (
    statecode   smallint NOT NULL,
    statename   text     NOT NULL,
    statuscode  smallint PRIMARY KEY,
    statusname  text     NOT NULL
);
INSERT INTO asyncjobs.status VALUES
    (0, 'Ready', 0, 'WaitingForResources'),
    (1, 'Suspended', 10, 'Waiting'),
    (1, 'Suspended', 11, 'Retrying'),
    (1, 'Suspended', 12, 'Paused'),
    (2, 'Locked', 20, 'InProgress'),
    (2, 'Locked', 21, 'Pausing'),
    (2, 'Locked', 22, 'Canceling'),
    (3, 'Completed', 30, 'Succeeded'),
    (3, 'Completed', 31, 'Failed'),
    (3, 'Completed', 32, 'Canceled');

--------------------------------------------------------------------------
-- Internal functions used by the workers
--------------------------------------------------------------------------

-- A claimed job, as asyncjobs._claim and asyncjobs._claim_locked return it
-- (src/claim.c and src/worker.c read these columns by position).
CREATE TYPE asyncjobs.claimed_job AS (
    asyncoperationid bigint, messagename text, operationtype int,
    ownerid oid, data jsonb, retrycount int, maxretries int,
    handler oid, timeout_ms bigint, retry_delay_ms bigint,
    retry_delay_max_ms bigint, leasetoken uuid,
    leaseexpires timestamptz, priority int, runafter timestamptz,
    tuple_id tid, fused boolean, dependent boolean);

-- The jobs a claim takes, locked (FOR UPDATE SKIP LOCKED), in claim order:
-- per operation type that can be claimed (not paused; with a handler, or
-- builtin, unless external), its ready jobs after the watermark given for
-- it in after_* (claim key of the last job taken), none whose dependency
-- token an older job holds, at most its room under max_concurrency; the
-- operations interleaved within a priority; the first n.  fused: none when
-- an operation with max_concurrency can be claimed.  src/claim.c.
CREATE FUNCTION asyncjobs._claim_locked(n int, operations text[], external boolean,
                                        after_ops text[], after_priority int[],
                                        after_runafter timestamptz[],
                                        after_id bigint[], fused boolean)
RETURNS SETOF asyncjobs.claimed_job
LANGUAGE C
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'asyncjobs_claim_locked';

-- Claims up to n runnable jobs and marks them InProgress.
--
-- Runnable: Ready, or Suspended (postponed or retrying) and due; first of
-- its dependency token (no older job with the same token is still active);
-- of an operation that is not paused and still has room under its
-- max_concurrency.  The background workers (external = false) claim
-- operations with a handler or built in; external workers (external =
-- true, see asyncjobs.claim) the operations without a handler, and get a
-- lease instead of a worker id.
--
-- Fairness: each operation offers its first jobs, and they are taken in
-- priority order, then round robin across operations (within a priority,
-- the first job of every operation before the second of any), so a
-- backlog of one operation does not hold back another.
--
-- max_concurrency: claimers of a capped operation queue on an advisory
-- lock of that operation until the claim commits, so that each counts the
-- running jobs the previous one left; it is never exceeded.
--
-- Watermarks (after_ops and the parallel after_priority, after_runafter,
-- after_id; NULL by default): an operation named in after_ops offers only
-- jobs whose claim key (priority, runafter, asyncoperationid) sorts after
-- the given one, so that its scan of job_claim_idx starts there instead of
-- at the operation's first entry.  A background worker passes the key of
-- the last job it took of each operation while its claims are expensive:
-- while a transaction holds back the xmin horizon, the entries of every
-- job done since cannot be marked dead and each scan from the start visits
-- all of them (src/worker.c, claim_jobs).  Jobs that sort before a
-- watermark are left for a claim without one.  Operations without a
-- watermark get the lowest key, which every job sorts after: the row
-- comparison stays an index condition (a NULL test beside it would not).
-- priority and runafter are returned for that bookkeeping.  tuple_id is
-- where each job's claimed row version lies: the worker's outcome statement
-- finds the rows by it (a Tid Scan) instead of searching the primary key.
-- lock_only asks for a fused claim: the jobs are locked (FOR UPDATE) but
-- not marked InProgress, and the caller runs them in the same transaction;
-- fused says whether the claim was one (see the test below).
CREATE FUNCTION asyncjobs._claim(worker bigint, host text, n int,
                                 operations text[] DEFAULT NULL,
                                 external boolean DEFAULT false,
                                 lease interval DEFAULT NULL,
                                 after_ops text[] DEFAULT NULL,
                                 after_priority int[] DEFAULT NULL,
                                 after_runafter timestamptz[] DEFAULT NULL,
                                 after_id bigint[] DEFAULT NULL,
                                 lock_only boolean DEFAULT false)
RETURNS SETOF asyncjobs.claimed_job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- the claim touches a handful of rows: never worth compiling
SET jit = off
-- and its statements' plans do not depend on the arguments' values (it
-- reads job_claim_idx in order, and the jobs by id): with custom plans,
-- which the plan cache kept choosing, every call planned its statements
-- again, most of the time of a claim of one job (perf)
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    ids bigint[];
    tids tid[];
BEGIN
    PERFORM pg_advisory_xact_lock(1634364018, hashtext(t.name))
       FROM asyncjobs.operation_type t
      WHERE t.max_concurrency IS NOT NULL AND NOT t.paused
        AND (t.handler IS NOT NULL OR t.builtin) <> external
        AND (operations IS NULL OR t.name = ANY (operations))
      ORDER BY t.name;
    -- A fused claim only locks the jobs: they stay as they are, and run in
    -- the transaction that took them (src/worker.c, claim_jobs).  Not when
    -- an operation with max_concurrency is among those claimed (its cap
    -- counts the jobs marked InProgress), nor for external workers.
    lock_only := lock_only AND NOT external AND NOT FOUND;

    -- The choice of jobs, locked, in claim order (src/claim.c: the workers
    -- run that statement directly for their fused claims).
    IF lock_only THEN
        RETURN QUERY
        SELECT * FROM asyncjobs._claim_locked(n, operations, external, after_ops,
                                              after_priority, after_runafter,
                                              after_id, true);
        RETURN;
    END IF;

    SELECT coalesce(array_agg(c.asyncoperationid ORDER BY c.k), '{}'),
           array_agg(c.tuple_id ORDER BY c.k)
      INTO ids, tids
      FROM asyncjobs._claim_locked(n, operations, external, after_ops,
                                   after_priority, after_runafter, after_id,
                                   false) WITH ORDINALITY AS c(asyncoperationid, messagename,
                       operationtype, ownerid, data, retrycount, maxretries, handler,
                       timeout_ms, retry_delay_ms, retry_delay_max_ms, leasetoken,
                       leaseexpires, priority, runafter, tuple_id, fused, dependent, k);

    IF cardinality(ids) = 0 THEN
        RETURN;
    END IF;


    -- found by their tuple ids (the rows are locked: none can move), returned
    -- in claim order
    RETURN QUERY
    WITH taken AS (
        UPDATE asyncjobs.job j
           SET statecode = 2, statuscode = 20, startedon = now(),
               modifiedon = now(),
               lockedby = CASE WHEN external THEN NULL ELSE worker END,
               hostid = host,
               leasetoken = CASE WHEN external THEN gen_random_uuid() END,
               leaseexpires = CASE WHEN external THEN now() + lease END
          FROM asyncjobs.operation_type t
         WHERE j.ctid = ANY (tids)
           AND t.name = j.messagename
        RETURNING j.asyncoperationid, j.messagename, j.operationtype,
                  j.ownerid::oid AS ownerid, j.data, j.retrycount, j.maxretries,
                  t.handler::oid AS handler,
                  (extract(epoch FROM t.timeout) * 1000)::bigint AS timeout_ms,
                  (extract(epoch FROM t.retry_delay) * 1000)::bigint AS delay_ms,
                  (extract(epoch FROM t.retry_delay_max) * 1000)::bigint AS delay_max_ms,
                  j.leasetoken, j.leaseexpires, j.priority, j.runafter,
                  j.ctid, j.dependencytoken IS NOT NULL AS dep)
    SELECT k.asyncoperationid, k.messagename, k.operationtype, k.ownerid,
           k.data, k.retrycount, k.maxretries, k.handler, k.timeout_ms,
           k.delay_ms, k.delay_max_ms, k.leasetoken, k.leaseexpires,
           k.priority, k.runafter, k.ctid, false, k.dep
      FROM taken k
     ORDER BY array_position(ids, k.asyncoperationid);
END
$$;

-- Completes a job: moves it from the active table to history in one
-- statement, with its outcome, if its statuscode is still "expect" (20 by
-- default: a cancel or pause that came meanwhile wins).  A recurring job
-- that Succeeded or Failed queues its next occurrence.  Returns whether
-- the job was completed.
CREATE FUNCTION asyncjobs._finish(job_id bigint, status smallint, res jsonb,
                                  started timestamptz, timespan double precision,
                                  err_code text, err_message text,
                                  err_friendly text, attempt jsonb,
                                  expect smallint DEFAULT 20)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done asyncjobs.job_history%ROWTYPE;
BEGIN
    -- The workers run this same statement, prepared, for jobs that do not
    -- recur (finish_direct_plan in src/worker.c): keep the two alike.
    WITH d AS (
        DELETE FROM asyncjobs.job
         WHERE asyncoperationid = job_id
           AND (expect IS NULL OR statuscode = expect)
        RETURNING *)
    INSERT INTO asyncjobs.job_history
        (asyncoperationid, name, operationtype, messagename, statecode,
         statuscode, ownerid, createdon, modifiedon, startedon, completedon,
         postponeuntil, executiontimespan, retrycount, maxretries, errorcode,
         message, friendlymessage, data, result, priority, depth,
         correlationid, correlationupdatedtime, dependencytoken, dedupekey,
         recurrencepattern, recurrencestarttime, regardingobjectid, hostid,
         parentid, attempts)
    SELECT d.asyncoperationid, d.name, d.operationtype, d.messagename, 3,
           status, d.ownerid, d.createdon, clock_timestamp(),
           coalesce(started, d.startedon), clock_timestamp(),
           d.postponeuntil, coalesce(timespan, d.executiontimespan),
           d.retrycount, d.maxretries, err_code,
           err_message, err_friendly, d.data, res, d.priority, d.depth,
           d.correlationid, d.correlationupdatedtime, d.dependencytoken,
           d.dedupekey, d.recurrencepattern, d.recurrencestarttime,
           d.regardingobjectid, d.hostid, d.parentid,
           CASE WHEN attempt IS NULL THEN d.attempts ELSE d.attempts || attempt END
      FROM d
    RETURNING * INTO done;

    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- the figures of monitoring (85_monitoring.sql), in the same transaction
    PERFORM asyncjobs._rollup_add(done.messagename, done.ownerid, status,
                                  done.executiontimespan, 0,
                                  coalesce(err_code = 'AJ002', false));
    IF done.recurrencepattern IS NOT NULL AND status IN (30, 31) THEN
        PERFORM asyncjobs._queue_next_occurrence(done);
    END IF;
    RETURN true;
END
$$;

-- Queues the next occurrence of a recurring job that just completed: a
-- new job (new id) with the same operation, data and options, postponed
-- to the next time of its pattern.
CREATE FUNCTION asyncjobs._queue_next_occurrence(done asyncjobs.job_history)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    next_run timestamptz;
    id       bigint;
BEGIN
    next_run := asyncjobs._next_occurrence(done.recurrencepattern,
                                           done.recurrencestarttime,
                                           clock_timestamp());
    INSERT INTO asyncjobs.job
        (name, operationtype, messagename, statecode, statuscode, ownerid,
         postponeuntil, runafter, maxretries, data, priority, depth,
         correlationid, dependencytoken, dedupekey, recurrencepattern,
         recurrencestarttime, regardingobjectid)
    VALUES (done.name, done.operationtype, done.messagename, 1, 10,
            done.ownerid, next_run, next_run, done.maxretries, done.data,
            done.priority, 1, gen_random_uuid(), done.dependencytoken,
            done.dedupekey, done.recurrencepattern, done.recurrencestarttime,
            done.regardingobjectid)
    RETURNING asyncoperationid INTO id;
    RETURN id;
END
$$;

-- Sends a job that failed with a transient error back to wait for its next
-- attempt (Suspended / Retrying until next_run), if it is still InProgress.
CREATE FUNCTION asyncjobs._retry_later(job_id bigint, next_run timestamptz,
                                       started timestamptz,
                                       timespan double precision,
                                       err_code text, err_message text,
                                       err_friendly text, attempt jsonb,
                                       expect smallint DEFAULT 20)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op    text;
    owner regrole;
BEGIN
    UPDATE asyncjobs.job
       SET statecode = 1, statuscode = 11, retrycount = retrycount + 1,
           postponeuntil = next_run, runafter = next_run,
           modifiedon = clock_timestamp(), startedon = started,
           executiontimespan = timespan, errorcode = err_code,
           message = err_message, friendlymessage = err_friendly,
           lockedby = NULL, hostid = NULL, leasetoken = NULL,
           leaseexpires = NULL, attempts = attempts || attempt
     WHERE asyncoperationid = job_id
       AND (expect IS NULL OR statuscode = expect)
    RETURNING messagename, ownerid INTO op, owner;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM asyncjobs._rollup_add(op, owner, NULL, NULL, 1);
    RETURN true;
END
$$;

-- Ends a Locked job whose cancel or pause was asked while it was held:
-- Canceling becomes Canceled (moved to history), Pausing becomes Paused
-- (it runs again from the start when resumed).  Returns the new statuscode,
-- or NULL when the job is not Canceling or Pausing.
CREATE FUNCTION asyncjobs._control_outcome(job_id bigint, attempt jsonb)
RETURNS smallint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cur smallint;
BEGIN
    SELECT statuscode INTO cur FROM asyncjobs.job
     WHERE asyncoperationid = job_id FOR UPDATE;
    IF cur = 22 THEN
        PERFORM asyncjobs._finish(job_id, 32::smallint, NULL, NULL, NULL, NULL,
                                  NULL, 'canceled by user', attempt, 22::smallint);
        RETURN 32;
    ELSIF cur = 21 THEN
        UPDATE asyncjobs.job
           SET statecode = 1, statuscode = 12, modifiedon = clock_timestamp(),
               lockedby = NULL, hostid = NULL, leasetoken = NULL,
               leaseexpires = NULL,
               attempts = CASE WHEN attempt IS NULL THEN attempts ELSE attempts || attempt END
         WHERE asyncoperationid = job_id;
        RETURN 12;
    END IF;
    RETURN NULL;
END
$$;

-- Requeues the jobs held by workers that no longer exist (a worker that
-- was killed, or every worker of the server's previous life).  The loss of
-- the worker counts as a transient failure of the job: it runs again at
-- once, or ends Failed when its retry budget is spent.
CREATE FUNCTION asyncjobs._live_worker(worker bigint)
RETURNS boolean
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'asyncjobs_live_worker';

-- Tells the worker holding a job that the job was canceled or paused (and
-- interrupts the job if it is running).  Returns whether it was running.
CREATE FUNCTION asyncjobs._interrupt_worker(worker bigint, job bigint)
RETURNS boolean
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'asyncjobs_interrupt_worker';

-- In a worker's statement that writes the outcomes of a batch of jobs: the
-- job's position in the statement's arrays (src/worker.c); NULL elsewhere.
CREATE FUNCTION asyncjobs._batch_position(job_id bigint)
RETURNS int
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'asyncjobs_batch_position';

-- Wakes an idle worker of this database when the transaction commits.
CREATE FUNCTION asyncjobs._wake_at_commit()
RETURNS void
LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'asyncjobs_wake_at_commit_sql';

-- The loss of a job's worker (killed, crashed, or the server restarted),
-- counted as a transient failure of the job: it waits to run again at once
-- with retrycount + 1, or ends Failed when its retry budget is spent.
-- "expect" is the statuscode the job must still have (NULL: any).
CREATE FUNCTION asyncjobs._worker_lost(job_id bigint, retries int, max_retries int,
                                       op text, owner regrole, expect smallint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    msg     constant text := 'the worker running the job terminated';
    attempt jsonb;
BEGIN
    attempt := jsonb_build_object('outcome', 'worker_lost',
                                  'ended', clock_timestamp(),
                                  'errorcode', '57P01', 'message', msg);
    IF asyncjobs._control_outcome(job_id, attempt) IS NOT NULL THEN
        NULL;   -- it was Canceling or Pausing: now Canceled or Paused
    ELSIF retries >= max_retries THEN
        PERFORM asyncjobs._finish(job_id, 31::smallint,
            NULL, NULL, NULL, '57P01',
            'ERROR:  ' || msg || E'\nDETAIL:  The job was interrupted and its retry budget of '
                || max_retries || ' retries is spent.',
            msg, attempt, expect);
    ELSE
        UPDATE asyncjobs.job
           SET statecode = 0, statuscode = 0, retrycount = retrycount + 1,
               runafter = clock_timestamp(), modifiedon = clock_timestamp(),
               lockedby = NULL, hostid = NULL, errorcode = '57P01',
               message = 'ERROR:  ' || msg, friendlymessage = msg,
               attempts = attempts || attempt
         WHERE asyncoperationid = job_id;
        PERFORM asyncjobs._rollup_add(op, owner, NULL, NULL, 1);
        -- waiting again at its old place in the claim order, before where
        -- the workers' claims now start (src/worker.c, claim watermarks)
        PERFORM asyncjobs._wake_at_commit();
    END IF;
END
$$;

-- The jobs held by workers that no longer exist.
CREATE FUNCTION asyncjobs._requeue_orphans()
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n       int := 0;
    orphan  record;
BEGIN
    FOR orphan IN
        SELECT j.asyncoperationid, j.retrycount, j.maxretries, j.messagename, j.ownerid
          FROM asyncjobs.job j
         WHERE j.statecode = 2 AND j.lockedby IS NOT NULL
           AND NOT asyncjobs._live_worker(j.lockedby)
           FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM asyncjobs._worker_lost(orphan.asyncoperationid, orphan.retrycount,
                                       orphan.maxretries, orphan.messagename,
                                       orphan.ownerid, NULL);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- The jobs of claims that a crash undid.  A worker commits its claims
-- without waiting for the WAL flush (the batch that runs the jobs waits for
-- it), so a crash of the server can undo a claim whose jobs were already
-- running: they are back to waiting, their loss not counted.  Each worker
-- writes the jobs of its claim, with their retrycount, to a file before the
-- claim commits (src/inflight.c); the workers of the next life pass the
-- files of the dead workers here.  A job is counted lost only if it is
-- still waiting, unclaimed, with the retrycount it had when claimed: else
-- the claim did survive (the job is InProgress, done, or was requeued with
-- its loss counted).
CREATE FUNCTION asyncjobs._requeue_lost_claims(ids bigint[], retries int[])
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n     int := 0;
    lost  record;
BEGIN
    FOR lost IN
        SELECT j.asyncoperationid, j.retrycount, j.maxretries, j.messagename,
               j.ownerid, j.statuscode
          FROM unnest(ids, retries) AS c(id, retrycount)
          JOIN asyncjobs.job j ON j.asyncoperationid = c.id
         WHERE j.statuscode IN (0, 10, 11) AND j.lockedby IS NULL
           AND j.leasetoken IS NULL AND j.retrycount = c.retrycount
         ORDER BY j.asyncoperationid
           FOR UPDATE OF j SKIP LOCKED
    LOOP
        PERFORM asyncjobs._worker_lost(lost.asyncoperationid, lost.retrycount,
                                       lost.maxretries, lost.messagename,
                                       lost.ownerid, lost.statuscode);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

--------------------------------------------------------------------------
-- Public API
--------------------------------------------------------------------------

CREATE FUNCTION asyncjobs.register_operation(
    name text,
    handler regprocedure DEFAULT NULL,
    max_retries int DEFAULT 5,
    retry_delay interval DEFAULT '10 seconds',
    retry_delay_max interval DEFAULT '1 hour',
    timeout interval DEFAULT '2 minutes',
    max_concurrency int DEFAULT NULL,
    priority int DEFAULT 0)
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_register_operation';

COMMENT ON FUNCTION asyncjobs.register_operation(text, regprocedure, int, interval, interval, interval, int, int) IS
'registers (or updates) an operation: the handler its jobs run and how they are retried';

CREATE FUNCTION asyncjobs.enqueue(
    operation text,
    data jsonb DEFAULT '{}',
    name text DEFAULT NULL,
    priority int DEFAULT NULL,
    postpone_until timestamptz DEFAULT NULL,
    dependency_token text DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    max_retries int DEFAULT NULL,
    recurrence text DEFAULT NULL,
    regarding text DEFAULT NULL)
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_enqueue';

COMMENT ON FUNCTION asyncjobs.enqueue(text, jsonb, text, int, timestamptz, text, text, int, text, text) IS
'queues a job of a registered operation; it runs after the calling transaction commits';

-- One job per element of data, in one statement, with the same options;
-- returns their ids in the order of data.
CREATE FUNCTION asyncjobs.enqueue_many(
    operation text,
    data jsonb[],
    name text DEFAULT NULL,
    priority int DEFAULT NULL,
    postpone_until timestamptz DEFAULT NULL,
    dependency_token text DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    max_retries int DEFAULT NULL,
    recurrence text DEFAULT NULL,
    regarding text DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE C
ROWS 100
AS 'MODULE_PATHNAME', 'asyncjobs_enqueue_many';

COMMENT ON FUNCTION asyncjobs.enqueue_many(text, jsonb[], text, int, timestamptz, text, text, int, text, text) IS
'queues one job per element of data (the options apply to each); returns their ids in the order of data';

CREATE FUNCTION asyncjobs.enqueue_sql(
    command text,
    data jsonb DEFAULT '{}',
    name text DEFAULT NULL,
    priority int DEFAULT NULL,
    postpone_until timestamptz DEFAULT NULL,
    dependency_token text DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    max_retries int DEFAULT NULL,
    recurrence text DEFAULT NULL,
    regarding text DEFAULT NULL)
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_enqueue_sql';

COMMENT ON FUNCTION asyncjobs.enqueue_sql(text, jsonb, text, int, timestamptz, text, text, int, text, text) IS
'queues a job that runs a SQL command (operationtype 54)';

CREATE FUNCTION asyncjobs.wait(job bigint, timeout interval DEFAULT '30 seconds')
RETURNS smallint
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_wait';

COMMENT ON FUNCTION asyncjobs.wait(bigint, interval) IS
'waits until the job completes or the timeout passes; returns its statuscode';

-- STABLE, so that "WHERE asyncoperationid = asyncjobs.current_job()" is an
-- index lookup; PARALLEL RESTRICTED: the id lives in this backend only.
CREATE FUNCTION asyncjobs.current_job()
RETURNS bigint
LANGUAGE C STABLE PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'asyncjobs_current_job';

COMMENT ON FUNCTION asyncjobs.current_job() IS
'inside a running job: its asyncoperationid; elsewhere NULL';

-- Refuses a value larger than asyncjobs.max_payload_size (SQLSTATE 54000).
CREATE FUNCTION asyncjobs._check_payload(value jsonb, what text)
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_check_payload_sql';

CREATE FUNCTION asyncjobs._workers(
    OUT pid int, OUT database oid, OUT worker_id bigint,
    OUT asyncoperationid bigint, OUT operation text, OUT since timestamptz,
    OUT started timestamptz, OUT state text, OUT jobs_done bigint)
RETURNS SETOF record
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_workers';

-- Tell the launcher this database now has the extension, so that its
-- workers start now rather than at the launcher's next scan.
CREATE FUNCTION asyncjobs._database_changed()
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'asyncjobs_database_changed';

SELECT asyncjobs._database_changed();

