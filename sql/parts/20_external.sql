
/* sql/parts/20_external.sql: external workers: claim, complete, fail, heartbeat */

--------------------------------------------------------------------------
-- External workers
--------------------------------------------------------------------------
--
-- Jobs of operations registered without a handler are run by external
-- workers: programs in any language that call asyncjobs.claim() and get
-- jobs with a lease (a random token and an expiry time), then report with
-- complete(), fail() or heartbeat() and that token.
--
-- * The token is the lease: only the claimer learns it (the job table is
--   not readable by users and asyncoperation does not show it).
-- * A lease that expires before heartbeat() renews it is lost when the job
--   is requeued: by the next claim of that operation, or by
--   asyncjobs._requeue_expired_leases() (the workers' maintenance).  The loss counts as a transient failure of the
--   job (SQLSTATE AJ004): it is Ready again at once, or Failed when its
--   retry budget is spent.  Until it is requeued, an expired lease is still
--   honoured: complete(), fail() and heartbeat() succeed.
-- * Once requeued, the old token is dead: complete(), fail() and
--   heartbeat() with it raise SQLSTATE 55000, even if the job is claimed
--   again (it then has a new token).
-- * All of these lock the job's row, and the requeue skips locked rows, so
--   a report and the expiry of its lease never both apply.
-- * A cancel or pause asked while the job is held takes effect at the
--   worker's next call: fail() and heartbeat() end the job Canceled or
--   Paused, and complete() ends it Canceled (result discarded) or, for a
--   pause, Succeeded (the job is done: running it again when resumed would
--   repeat its effects).  The call returns normally with a NOTICE; the
--   lease is released, so the token's next use raises 55000.
--
-- SQLSTATEs recorded in errorcode: AJ001 a transient failure reported by
-- fail(..., transient => true); AJ003 a permanent failure reported by
-- fail(); AJ004 a lease that expired.

-- Raises an error unless a lease length is acceptable.
CREATE FUNCTION asyncjobs._check_lease(lease interval)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF lease IS NULL THEN
        RAISE EXCEPTION 'lease must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF lease <= interval '0' OR lease > interval '1 day' THEN
        RAISE EXCEPTION 'lease must be positive and at most 1 day'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The lease given is %s.', lease),
                  HINT = 'A worker that needs longer extends its lease with asyncjobs.heartbeat().';
    END IF;
END
$$;

-- Raises an error unless the caller may report on a job of operation op:
-- it must have the privileges of the operation's owner (of the job's
-- owner, if the operation is gone), like the claimer.
CREATE FUNCTION asyncjobs._check_external(caller regrole, op text,
                                          job_owner regrole, job_id bigint)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op_owner regrole;
BEGIN
    SELECT t.owner INTO op_owner FROM asyncjobs.operation_type t WHERE t.name = op;
    op_owner := coalesce(op_owner, job_owner);
    IF NOT pg_has_role(caller::oid, op_owner::oid, 'USAGE') THEN
        RAISE EXCEPTION 'permission denied for job %', job_id
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Job %s is of operation "%s", which belongs to role %s.',
                                  job_id, op, op_owner),
                  HINT = 'Only the operation''s owner, roles with its privileges and superusers may claim, complete, fail or heartbeat its jobs.';
    END IF;
END
$$;

-- The error for a token that does not hold the job (any more).
CREATE FUNCTION asyncjobs._lease_lost(job_id bigint, cur_status smallint)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s asyncjobs.status%ROWTYPE;
BEGIN
    SELECT * INTO s FROM asyncjobs.status st WHERE st.statuscode = cur_status;
    RAISE EXCEPTION 'job % is not held with this lease token', job_id
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = CASE
                  WHEN s.statecode = 3 THEN format('The job is already %s (%s).', s.statename, s.statusname)
                  WHEN s.statecode = 2 THEN format('The job is %s (%s) under another lease.', s.statename, s.statusname)
                  ELSE format('The job is %s (%s), held by no worker.', s.statename, s.statusname)
              END,
              HINT = 'A lease is lost when it expires before asyncjobs.heartbeat() renews it: the job is then requeued and may be claimed by another worker. Stop working on this job.';
END
$$;

-- Locks and returns a job held with the given lease token; raises the
-- error for a NULL argument, an unknown job, a job the caller may not
-- report on, or a token that does not hold the job.
CREATE FUNCTION asyncjobs._leased_job(caller regrole, job_id bigint, lease_token uuid)
RETURNS asyncjobs.job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j asyncjobs.job%ROWTYPE;
    h record;
BEGIN
    PERFORM asyncjobs._require_job(job_id);
    IF lease_token IS NULL THEN
        RAISE EXCEPTION 'token must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- waits for a concurrent report, claim or requeue of the job to commit
    SELECT * INTO j FROM asyncjobs.job WHERE asyncoperationid = job_id FOR UPDATE;
    IF NOT FOUND THEN
        SELECT messagename, ownerid, statuscode INTO h
          FROM asyncjobs.job_history WHERE asyncoperationid = job_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % does not exist', job_id
                USING ERRCODE = 'undefined_object';
        END IF;
        PERFORM asyncjobs._check_external(caller, h.messagename, h.ownerid, job_id);
        PERFORM asyncjobs._lease_lost(job_id, h.statuscode);
    END IF;
    PERFORM asyncjobs._check_external(caller, j.messagename, j.ownerid, job_id);
    IF j.statecode <> 2 OR j.leasetoken IS DISTINCT FROM lease_token THEN
        PERFORM asyncjobs._lease_lost(job_id, j.statuscode);
    END IF;
    RETURN j;
END
$$;

-- An entry of a job's attempts, for an attempt of an external worker.
CREATE FUNCTION asyncjobs._external_attempt(j asyncjobs.job, outcome text,
                                            ended timestamptz,
                                            err_code text DEFAULT NULL,
                                            err_message text DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object('attempt', j.retrycount + 1, 'outcome', outcome,
                              'started', j.startedon, 'ended', ended,
                              'worker', j.hostid)
        || CASE WHEN err_code IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('errorcode', err_code, 'message', err_message)
           END
$$;

-- Requeues the jobs whose external worker's lease has expired (of the
-- given operations, or of all).  A job whose cancel or pause was asked
-- ends Canceled or Paused; any other counts the expiry as a transient
-- failure (SQLSTATE AJ004): Ready again at once, or Failed when its retry
-- budget is spent.  Jobs whose row is locked (a report of their worker is
-- under way) are skipped, so it is safe to call concurrently.  Returns how
-- many jobs it requeued or ended.
CREATE FUNCTION asyncjobs._requeue_expired_leases(operations text[] DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n       int := 0;
    x       asyncjobs.job%ROWTYPE;
    msg     constant text := 'the lease of the external worker expired';
    detail  text;
    attempt jsonb;
BEGIN
    FOR x IN
        SELECT * FROM asyncjobs.job j
         WHERE j.statecode = 2 AND j.leasetoken IS NOT NULL
           AND j.leaseexpires < now()
           AND (operations IS NULL OR j.messagename = ANY (operations))
         ORDER BY j.asyncoperationid
           FOR UPDATE SKIP LOCKED
    LOOP
        attempt := asyncjobs._external_attempt(x, 'lease_expired', x.leaseexpires,
                                               'AJ004', msg);
        detail := format('External worker "%s" did not complete the job before its lease expired.',
                         x.hostid);
        IF asyncjobs._control_outcome(x.asyncoperationid, attempt) IS NOT NULL THEN
            NULL;   -- it was Canceling or Pausing: now Canceled or Paused
        ELSIF x.retrycount >= x.maxretries THEN
            PERFORM asyncjobs._finish(x.asyncoperationid, 31::smallint, NULL,
                x.startedon, extract(epoch FROM x.leaseexpires - x.startedon)::float8,
                'AJ004',
                'ERROR:  ' || msg || E'\nDETAIL:  ' || detail
                    || ' Its retry budget of ' || x.maxretries || ' retries is spent.',
                msg, attempt, 20::smallint);
        ELSE
            UPDATE asyncjobs.job
               SET statecode = 0, statuscode = 0, retrycount = retrycount + 1,
                   runafter = now(), modifiedon = clock_timestamp(),
                   executiontimespan = extract(epoch FROM x.leaseexpires - x.startedon),
                   hostid = NULL, leasetoken = NULL, leaseexpires = NULL,
                   errorcode = 'AJ004', message = 'ERROR:  ' || msg || E'\nDETAIL:  ' || detail,
                   friendlymessage = msg, attempts = attempts || attempt
             WHERE asyncoperationid = x.asyncoperationid;
            PERFORM asyncjobs._rollup_add(x.messagename, x.ownerid, NULL, NULL, 1);
        END IF;
        n := n + 1;
    END LOOP;
    IF n > 0 THEN
        PERFORM asyncjobs._wake_at_commit();
    END IF;
    RETURN n;
END
$$;

COMMENT ON FUNCTION asyncjobs._requeue_expired_leases(text[]) IS
'requeues the jobs whose external worker''s lease expired (a transient failure, SQLSTATE AJ004)';

-- Delay before the next attempt of a job that failed with a transient
-- error: min(retry_delay * 2^retrycount, retry_delay_max), +/- 10 %.
CREATE FUNCTION asyncjobs._backoff(j asyncjobs.job)
RETURNS interval
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base_s float8;
    max_s  float8;
BEGIN
    SELECT extract(epoch FROM t.retry_delay)::float8,
           extract(epoch FROM t.retry_delay_max)::float8
      INTO base_s, max_s
      FROM asyncjobs.operation_type t WHERE t.name = j.messagename;
    base_s := coalesce(base_s, 10);
    max_s := coalesce(max_s, 3600);
    RETURN make_interval(secs => least(base_s * power(2::float8, least(j.retrycount, 60)), max_s)
                                 * (0.9 + 0.2 * random()));
END
$$;

--------------------------------------------------------------------------
-- claim, complete, fail, heartbeat
--------------------------------------------------------------------------

CREATE FUNCTION asyncjobs._claim_impl(caller regrole, op_names text[], max_n int,
                                      lease_for interval, worker_name text)
RETURNS TABLE (asyncoperationid bigint, token uuid, operation text, data jsonb,
               retrycount int, lease_expires timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op   text;
    t    asyncjobs.operation_type%ROWTYPE;
    host text;
    ids  bigint[];
BEGIN
    IF op_names IS NULL THEN
        RAISE EXCEPTION 'operations must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF cardinality(op_names) = 0 THEN
        RAISE EXCEPTION 'operations must name at least one operation'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF array_position(op_names, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'operations must not contain NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF max_n IS NULL THEN
        RAISE EXCEPTION 'max_jobs must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF max_n < 1 OR max_n > 1000 THEN
        RAISE EXCEPTION 'max_jobs must be between 1 and 1000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM asyncjobs._check_lease(lease_for);
    IF worker_name IS NOT NULL AND (btrim(worker_name, E' \t\r\n') = '' OR length(worker_name) > 256) THEN
        RAISE EXCEPTION 'worker must be a name of 1 to 256 characters'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Leave it NULL to use the name of the calling role.';
    END IF;

    FOR op IN SELECT DISTINCT u FROM unnest(op_names) u ORDER BY 1 LOOP
        SELECT * INTO t FROM asyncjobs.operation_type ot WHERE ot.name = op;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'operation "%" is not registered', op
                USING ERRCODE = 'undefined_object';
        ELSIF t.builtin OR t.handler IS NOT NULL THEN
            RAISE EXCEPTION 'operation "%" is not for external workers', op
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = CASE WHEN t.builtin
                                    THEN 'It is built in: the background workers run its jobs.'
                                    ELSE format('It has a handler, %s: the background workers run its jobs.', t.handler)
                               END,
                      HINT = 'External workers claim the jobs of operations registered without a handler.';
        ELSIF NOT pg_has_role(caller::oid, t.owner::oid, 'USAGE') THEN
            RAISE EXCEPTION 'permission denied for operation "%"', op
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('Operation "%s" belongs to role %s.', op, t.owner),
                      HINT = 'Only the operation''s owner, roles with its privileges and superusers may claim its jobs.';
        END IF;
    END LOOP;

    host := coalesce(worker_name, (SELECT r.rolname FROM pg_roles r WHERE r.oid = caller::oid));
    PERFORM asyncjobs._requeue_expired_leases(op_names);
    SELECT array_agg(c.asyncoperationid) INTO ids
      FROM asyncjobs._claim(NULL, host, max_n, op_names, true, lease_for) c;

    -- in claim order: priority, then due time, then id
    RETURN QUERY
    SELECT j.asyncoperationid, j.leasetoken, j.messagename, j.data, j.retrycount,
           j.leaseexpires
      FROM asyncjobs.job j
     WHERE j.asyncoperationid = ANY (ids)
     ORDER BY j.priority, j.runafter, j.asyncoperationid;
END
$$;

CREATE FUNCTION asyncjobs._complete_impl(caller regrole, job_id bigint,
                                         lease_token uuid, res jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j       asyncjobs.job%ROWTYPE;
    ended   timestamptz := clock_timestamp();
    attempt jsonb;
BEGIN
    PERFORM asyncjobs._check_payload(res, 'job result');
    SELECT * INTO j FROM asyncjobs._leased_job(caller, job_id, lease_token);
    attempt := asyncjobs._external_attempt(j, 'succeeded', ended);
    IF j.statuscode = 22 THEN
        PERFORM asyncjobs._control_outcome(job_id, attempt);
        RAISE NOTICE 'job % was canceled while it ran: it ends Canceled and its result is discarded',
                     job_id;
    ELSE
        -- InProgress, or Pausing: a job that is done has nothing left to
        -- pause, and running it again when resumed would repeat its effects
        PERFORM asyncjobs._finish(job_id, 30::smallint, res, j.startedon,
                                  extract(epoch FROM ended - j.startedon)::float8,
                                  NULL, NULL, NULL, attempt, j.statuscode);
        IF j.statuscode = 21 THEN
            RAISE NOTICE 'job % completed while its pause was pending: it ends Succeeded',
                         job_id;
        END IF;
    END IF;
    PERFORM asyncjobs._wake_at_commit();
END
$$;

CREATE FUNCTION asyncjobs._fail_impl(caller regrole, job_id bigint, lease_token uuid,
                                     msg text, is_transient boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j        asyncjobs.job%ROWTYPE;
    ended    timestamptz := clock_timestamp();
    code     text;
    full_msg text;
    timespan float8;
    retry    boolean;
    status   smallint;
BEGIN
    IF msg IS NULL THEN
        RAISE EXCEPTION 'message must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF btrim(msg, E' \t\r\n') = '' THEN
        RAISE EXCEPTION 'message must not be empty' USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Say why the job failed: the message is what operators read.';
    ELSIF is_transient IS NULL THEN
        RAISE EXCEPTION 'transient must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO j FROM asyncjobs._leased_job(caller, job_id, lease_token);

    code := CASE WHEN is_transient THEN 'AJ001' ELSE 'AJ003' END;
    full_msg := format(E'ERROR:  %s\nDETAIL:  Reported by external worker "%s".', msg, j.hostid);
    timespan := extract(epoch FROM ended - j.startedon);
    retry := is_transient AND j.retrycount < j.maxretries;

    IF j.statuscode IN (21, 22) THEN
        status := asyncjobs._control_outcome(job_id,
                      asyncjobs._external_attempt(j, 'failed', ended, code, msg));
        IF status = 32 THEN
            RAISE NOTICE 'job % was canceled while it ran: it ends Canceled', job_id;
        ELSE
            RAISE NOTICE 'job % was paused while it ran: it ends Paused and runs again when resumed',
                         job_id;
        END IF;
    ELSIF retry THEN
        PERFORM asyncjobs._retry_later(job_id, ended + asyncjobs._backoff(j), j.startedon,
                                       timespan, code, full_msg, msg,
                                       asyncjobs._external_attempt(j, 'retry', ended, code, msg));
        RAISE LOG 'asyncjobs job % (%) failed: %', job_id, j.messagename, msg
            USING DETAIL = format('The failure is transient; retry %s of %s follows.',
                                  j.retrycount + 1, j.maxretries);
    ELSE
        PERFORM asyncjobs._finish(job_id, 31::smallint, NULL, j.startedon, timespan,
                                  code, full_msg, msg,
                                  asyncjobs._external_attempt(j, 'failed', ended, code, msg),
                                  20::smallint);
        RAISE LOG 'asyncjobs job % (%) failed: %', job_id, j.messagename, msg
            USING DETAIL = format('The job ended Failed after %s retries.', j.retrycount);
    END IF;
    PERFORM asyncjobs._wake_at_commit();
END
$$;

CREATE FUNCTION asyncjobs._heartbeat_impl(caller regrole, job_id bigint,
                                          lease_token uuid, lease_for interval)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j      asyncjobs.job%ROWTYPE;
    status smallint;
BEGIN
    PERFORM asyncjobs._check_lease(lease_for);
    SELECT * INTO j FROM asyncjobs._leased_job(caller, job_id, lease_token);
    IF j.statuscode IN (21, 22) THEN
        status := asyncjobs._control_outcome(job_id,
                      asyncjobs._external_attempt(j, 'interrupted', clock_timestamp()));
        IF status = 32 THEN
            RAISE NOTICE 'job % was canceled: stop working on it', job_id
                USING DETAIL = 'The job ends Canceled and the lease is released.';
        ELSE
            RAISE NOTICE 'job % was paused: stop working on it', job_id
                USING DETAIL = 'The job ends Paused and the lease is released; it runs again from the start when resumed.';
        END IF;
        PERFORM asyncjobs._wake_at_commit();
        RETURN;
    END IF;
    UPDATE asyncjobs.job SET leaseexpires = clock_timestamp() + lease_for
     WHERE asyncoperationid = job_id;
END
$$;

CREATE FUNCTION asyncjobs.claim(operations text[], max_jobs int DEFAULT 1,
                                lease interval DEFAULT '5 minutes',
                                worker text DEFAULT NULL)
RETURNS TABLE (asyncoperationid bigint, token uuid, operation text, data jsonb,
               retrycount int, lease_expires timestamptz)
LANGUAGE C ROWS 10 AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.claim(text[], int, interval, text) IS
'external workers: claims up to max_jobs due jobs of operations without a handler, each with a lease token';

CREATE FUNCTION asyncjobs.complete(job bigint, token uuid, result jsonb DEFAULT NULL)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.complete(bigint, uuid, jsonb) IS
'external workers: a job held with this lease token Succeeded, with this result';

CREATE FUNCTION asyncjobs.fail(job bigint, token uuid, message text,
                               transient boolean DEFAULT false)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.fail(bigint, uuid, text, boolean) IS
'external workers: a job held with this lease token failed; a transient failure is retried with backoff';

CREATE FUNCTION asyncjobs.heartbeat(job bigint, token uuid, lease interval DEFAULT '5 minutes')
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.heartbeat(bigint, uuid, interval) IS
'external workers: extends the lease of a job held with this token to now + lease';
