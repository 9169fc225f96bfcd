
/* sql/parts/10_control.sql: cancel, pause, resume, postpone, retry; whole operations */

--------------------------------------------------------------------------
-- Who may manage a job
--------------------------------------------------------------------------

-- The public functions below are LANGUAGE C with the symbol
-- asyncjobs_api_call: it runs asyncjobs._NAME_impl(caller, args...) as the
-- extension's owner, telling it the real caller (see src/api.c).

-- Raises an error unless the caller may manage jobs of the owner: the
-- owner itself, a role that has its privileges, or a superuser.
CREATE FUNCTION asyncjobs._check_manage(caller regrole, owner regrole, job_id bigint)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT (pg_has_role(caller::oid, owner::oid, 'USAGE') OR asyncjobs._is_admin(caller)) THEN
        RAISE EXCEPTION 'permission denied for job %', job_id
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Job %s belongs to role %s.', job_id, owner),
                  HINT = 'Only the job''s owner, roles with its privileges, members of asyncjobs_admin and superusers may manage it.';
    END IF;
END
$$;

-- For a job that is not in the active table: raises the error for an
-- unknown job or one the caller may not manage, else returns its
-- statuscode (30, 31 or 32).
CREATE FUNCTION asyncjobs._completed_status(caller regrole, job_id bigint)
RETURNS smallint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h record;
BEGIN
    SELECT ownerid, statuscode INTO h FROM asyncjobs.job_history
     WHERE asyncoperationid = job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', job_id
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM asyncjobs._check_manage(caller, h.ownerid, job_id);
    RETURN h.statuscode;
END
$$;

CREATE FUNCTION asyncjobs._require_job(job_id bigint)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF job_id IS NULL THEN
        RAISE EXCEPTION 'job must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
END
$$;

-- The state a job that may run takes: Suspended / Waiting while it is
-- postponed or behind an older job of its dependency token, else Ready.
CREATE FUNCTION asyncjobs._waiting_state(j asyncjobs.job)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT j.runafter > now()
        OR (j.dependencytoken IS NOT NULL AND EXISTS (
              SELECT 1 FROM asyncjobs.job d
               WHERE d.dependencytoken = j.dependencytoken
                 AND d.asyncoperationid < j.asyncoperationid))
$$;

--------------------------------------------------------------------------
-- cancel, pause, resume, postpone, retry
--------------------------------------------------------------------------

-- Locks a job that is not completed and returns it, after checking that
-- the caller may manage it.  Waits for a worker's claim of the job to
-- commit, and then sees its result.  For a completed job, checks the same
-- and returns a row of NULLs; an unknown job is an error.
CREATE FUNCTION asyncjobs._lock_job(caller regrole, job_id bigint)
RETURNS asyncjobs.job
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j asyncjobs.job%ROWTYPE;
BEGIN
    PERFORM asyncjobs._require_job(job_id);
    SELECT * INTO j FROM asyncjobs.job WHERE asyncoperationid = job_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM asyncjobs._completed_status(caller, job_id);
        RETURN NULL;
    END IF;
    PERFORM asyncjobs._check_manage(caller, j.ownerid, job_id);
    RETURN j;
END
$$;

-- Asks a Locked job to stop: Canceling (22) or Pausing (21), and its
-- worker, if a background worker holds it, is told at once (an external
-- worker learns at its next call).
CREATE FUNCTION asyncjobs._stop_locked(j asyncjobs.job, status smallint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE asyncjobs.job SET statuscode = status, modifiedon = clock_timestamp()
     WHERE asyncoperationid = j.asyncoperationid;
    IF j.lockedby IS NOT NULL THEN
        PERFORM asyncjobs._interrupt_worker(j.lockedby, j.asyncoperationid);
    END IF;
END
$$;

-- Ready or Suspended: Canceled at once.  Locked: Canceling, the worker is
-- interrupted, and the job ends Canceled with its effects rolled back.
CREATE FUNCTION asyncjobs._cancel_impl(caller regrole, job_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j asyncjobs.job%ROWTYPE;
BEGIN
    j := asyncjobs._lock_job(caller, job_id);
    IF j.asyncoperationid IS NULL THEN
        RETURN false;       -- completed: it never changes
    END IF;

    IF j.statecode IN (0, 1) THEN
        PERFORM asyncjobs._finish(job_id, 32::smallint, NULL, NULL, NULL, NULL,
                                  NULL, 'canceled by user', NULL, j.statuscode);
        PERFORM asyncjobs._wake_at_commit();
        RETURN true;
    ELSIF j.statuscode = 22 THEN
        RETURN false;
    END IF;
    PERFORM asyncjobs._stop_locked(j, 22::smallint);
    RETURN true;
END
$$;

-- Ready or Suspended: Paused at once.  Locked (InProgress): Pausing, the
-- worker is interrupted, and the job ends Paused with its effects rolled
-- back; resumed, it runs again from the start.
CREATE FUNCTION asyncjobs._pause_impl(caller regrole, job_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j asyncjobs.job%ROWTYPE;
BEGIN
    j := asyncjobs._lock_job(caller, job_id);
    IF j.asyncoperationid IS NULL THEN
        RETURN false;       -- completed: it never changes
    END IF;

    IF j.statuscode IN (0, 10, 11) THEN
        UPDATE asyncjobs.job
           SET statecode = 1, statuscode = 12, modifiedon = clock_timestamp()
         WHERE asyncoperationid = job_id;
        RETURN true;
    ELSIF j.statuscode = 20 THEN
        PERFORM asyncjobs._stop_locked(j, 21::smallint);
        RETURN true;
    END IF;
    RETURN false;       -- Paused already, Pausing, or Canceling
END
$$;

-- Paused: Ready again (or Waiting, if postponed or behind its dependency).
CREATE FUNCTION asyncjobs._resume_impl(caller regrole, job_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j asyncjobs.job%ROWTYPE;
BEGIN
    j := asyncjobs._lock_job(caller, job_id);
    IF j.asyncoperationid IS NULL THEN
        RETURN false;       -- completed: it never changes
    END IF;
    IF j.statuscode <> 12 THEN
        RETURN false;
    END IF;
    UPDATE asyncjobs.job
       SET statecode = CASE WHEN asyncjobs._waiting_state(j) THEN 1 ELSE 0 END,
           statuscode = CASE WHEN asyncjobs._waiting_state(j) THEN 10 ELSE 0 END,
           modifiedon = clock_timestamp()
     WHERE asyncoperationid = job_id;
    PERFORM asyncjobs._wake_at_commit();
    RETURN true;
END
$$;

-- Ready or Suspended: waits until "until" (a past time makes it due now).
-- A paused job stays paused and waits until then once resumed.
CREATE FUNCTION asyncjobs._postpone_impl(caller regrole, job_id bigint, until timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j asyncjobs.job%ROWTYPE;
BEGIN
    PERFORM asyncjobs._require_job(job_id);
    IF until IS NULL THEN
        RAISE EXCEPTION 'until must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    ELSIF NOT isfinite(until) THEN
        RAISE EXCEPTION 'until must be a finite timestamp'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    j := asyncjobs._lock_job(caller, job_id);
    IF j.asyncoperationid IS NULL THEN
        RETURN false;
    END IF;
    IF j.statecode = 2 THEN
        RAISE EXCEPTION 'job % is running and cannot be postponed', job_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Pause it, postpone it, then resume it.';
    END IF;
    IF j.postponeuntil IS NOT DISTINCT FROM until THEN
        RETURN false;
    END IF;
    j.runafter := until;
    UPDATE asyncjobs.job
       SET postponeuntil = until, runafter = until,
           statecode = CASE WHEN j.statuscode = 12 THEN 1
                            WHEN asyncjobs._waiting_state(j) THEN 1 ELSE 0 END,
           statuscode = CASE WHEN j.statuscode = 12 THEN 12
                             WHEN j.statuscode = 11 AND until > now() THEN 11
                             WHEN asyncjobs._waiting_state(j) THEN 10 ELSE 0 END,
           modifiedon = clock_timestamp()
     WHERE asyncoperationid = job_id;
    PERFORM asyncjobs._wake_at_commit();
    RETURN true;
END
$$;

-- Failed or Canceled: back to the active table under the same id, Ready,
-- with a fresh retry budget.  Its attempts so far are kept.
CREATE FUNCTION asyncjobs._retry_impl(caller regrole, job_id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    status smallint;
    h      asyncjobs.job_history%ROWTYPE;
BEGIN
    PERFORM asyncjobs._require_job(job_id);
    IF EXISTS (SELECT 1 FROM asyncjobs.job WHERE asyncoperationid = job_id) THEN
        PERFORM asyncjobs._check_manage(caller,
            (SELECT ownerid FROM asyncjobs.job WHERE asyncoperationid = job_id), job_id);
        RAISE EXCEPTION 'job % is not completed', job_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Only Failed or Canceled jobs can be retried.';
    END IF;
    status := asyncjobs._completed_status(caller, job_id);
    IF status = 30 THEN
        RAISE EXCEPTION 'job % succeeded and cannot be retried', job_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Only Failed or Canceled jobs can be retried; enqueue a new job instead.';
    END IF;

    DELETE FROM asyncjobs.job_history WHERE asyncoperationid = job_id RETURNING * INTO h;
    BEGIN
        INSERT INTO asyncjobs.job
            (asyncoperationid, name, operationtype, messagename, statecode,
             statuscode, ownerid, createdon, modifiedon, startedon,
             postponeuntil, retrycount, maxretries, data, priority, depth,
             correlationid, correlationupdatedtime, dependencytoken,
             dedupekey, recurrencepattern, recurrencestarttime,
             regardingobjectid, parentid, runafter, attempts)
        VALUES (h.asyncoperationid, h.name, h.operationtype, h.messagename, 0,
                0, h.ownerid, h.createdon, clock_timestamp(), NULL,
                NULL, 0, h.maxretries, h.data, h.priority, h.depth,
                h.correlationid, clock_timestamp(), h.dependencytoken,
                h.dedupekey, h.recurrencepattern, h.recurrencestarttime,
                h.regardingobjectid, h.parentid, now(), h.attempts);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'job % cannot be retried while job with dedupe key "%" is active',
                        job_id, h.dedupekey
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END;
    UPDATE asyncjobs.job j
       SET statecode = 1, statuscode = 10
     WHERE j.asyncoperationid = job_id AND asyncjobs._waiting_state(j);
    PERFORM asyncjobs._wake_at_commit();
    RETURN job_id;
END
$$;

CREATE FUNCTION asyncjobs.cancel(job bigint)
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.cancel(bigint) IS
'cancels a job: at once if it waits, after interrupting its worker if it runs';

CREATE FUNCTION asyncjobs.pause(job bigint)
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.pause(bigint) IS
'pauses a job until asyncjobs.resume(); a running job is interrupted and runs again from the start';

CREATE FUNCTION asyncjobs.resume(job bigint)
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.resume(bigint) IS 'resumes a paused job';

CREATE FUNCTION asyncjobs.postpone(job bigint, until timestamptz)
RETURNS boolean LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.postpone(bigint, timestamptz) IS
'makes a waiting job wait until the given time';

CREATE FUNCTION asyncjobs.retry(job bigint)
RETURNS bigint LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.retry(bigint) IS
'runs a Failed or Canceled job again, same id, fresh retry budget';

--------------------------------------------------------------------------
-- Whole operations
--------------------------------------------------------------------------

CREATE FUNCTION asyncjobs._set_operation_paused(caller regrole, op text, pause boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t asyncjobs.operation_type%ROWTYPE;
BEGIN
    IF op IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO t FROM asyncjobs.operation_type WHERE name = op FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'operation "%" is not registered', op
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT (pg_has_role(caller::oid, t.owner::oid, 'USAGE') OR asyncjobs._is_admin(caller)
            OR (t.builtin AND (SELECT rolsuper FROM pg_roles WHERE oid = caller::oid))) THEN
        RAISE EXCEPTION 'must be owner of operation "%"', op
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE asyncjobs.operation_type SET paused = pause, modifiedon = now()
     WHERE name = op;
    IF NOT pause THEN
        PERFORM asyncjobs._wake_at_commit();
    END IF;
END
$$;

CREATE FUNCTION asyncjobs._pause_operation_impl(caller regrole, name text)
RETURNS void LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT asyncjobs._set_operation_paused(caller, name, true) $$;

CREATE FUNCTION asyncjobs._resume_operation_impl(caller regrole, name text)
RETURNS void LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT asyncjobs._set_operation_paused(caller, name, false) $$;

CREATE FUNCTION asyncjobs.pause_operation(name text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.pause_operation(text) IS
'no new job of the operation starts until resume_operation(); running ones finish';

CREATE FUNCTION asyncjobs.resume_operation(name text)
RETURNS void LANGUAGE C AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
COMMENT ON FUNCTION asyncjobs.resume_operation(text) IS
'lets the jobs of a paused operation start again';
