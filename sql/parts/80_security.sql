
/* sql/parts/80_security.sql: who sees and manages which jobs */

-- Members of asyncjobs_admin (roles with its privileges) see and manage
-- every role's jobs without being superusers.  The role is cluster-wide:
-- made by the first CREATE EXTENSION, kept when the extension is dropped.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'asyncjobs_admin') THEN
        CREATE ROLE asyncjobs_admin NOLOGIN;
    END IF;
END
$$;

-- Whether a role has the privileges of asyncjobs_admin.
CREATE FUNCTION asyncjobs._is_admin(caller regrole)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'asyncjobs_admin')
       AND pg_has_role(caller::oid, 'asyncjobs_admin', 'USAGE')
$$;

-- The roles whose jobs the current user sees: those whose privileges it
-- has (itself, roles it is a member of with INHERIT), or all for an admin.
-- Used in the policies below as an uncorrelated subquery, so it runs once
-- per query, not once per row.
CREATE FUNCTION asyncjobs._visible_owners()
RETURNS oid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN asyncjobs._is_admin(current_user::regrole) THEN NULL
                ELSE ARRAY(SELECT r.oid FROM pg_roles r WHERE pg_has_role(r.oid, 'USAGE'))
           END
$$;

-- A job of a dropped role is seen only by admins.
ALTER TABLE asyncjobs.job ENABLE ROW LEVEL SECURITY;
CREATE POLICY job_owner ON asyncjobs.job FOR SELECT
    USING ((SELECT asyncjobs._visible_owners()) IS NULL
           OR ownerid::oid = ANY (coalesce((SELECT asyncjobs._visible_owners()), '{}')));

ALTER TABLE asyncjobs.job_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY job_history_owner ON asyncjobs.job_history FOR SELECT
    USING ((SELECT asyncjobs._visible_owners()) IS NULL
           OR ownerid::oid = ANY (coalesce((SELECT asyncjobs._visible_owners()), '{}')));

ALTER TABLE asyncjobs.plugintracelog ENABLE ROW LEVEL SECURITY;
CREATE POLICY plugintracelog_owner ON asyncjobs.plugintracelog FOR SELECT
    USING (asyncoperationid IN (SELECT a.asyncoperationid FROM asyncjobs.asyncoperation a));

ALTER TABLE asyncjobs.bulkdelete_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY bulkdelete_progress_owner ON asyncjobs.bulkdelete_progress FOR SELECT
    USING (asyncoperationid IN (SELECT a.asyncoperationid FROM asyncjobs.asyncoperation a));

ALTER TABLE asyncjobs.bulkdeletefailure ENABLE ROW LEVEL SECURITY;
CREATE POLICY bulkdeletefailure_owner ON asyncjobs.bulkdeletefailure FOR SELECT
    USING (asyncoperationid IN (SELECT a.asyncoperationid FROM asyncjobs.asyncoperation a));

-- The live worker pool, read from shared memory.  Every role sees the
-- pool; the job a worker runs (its id and operation) only where the role
-- may see that job: jobs of this database that the policy on
-- asyncjobs.job shows it, or any job for asyncjobs_admin.  The view reads
-- as the querying role (security_invoker, set below).
CREATE VIEW asyncjobs.workers AS
SELECT w.pid, d.datname AS database,
       CASE WHEN v.visible THEN w.asyncoperationid END AS asyncoperationid,
       CASE WHEN v.visible THEN w.operation END AS operation,
       w.since, w.started, w.state, w.jobs_done, w.worker_id
  FROM asyncjobs._workers() w
  LEFT JOIN pg_catalog.pg_database d ON d.oid = w.database
  CROSS JOIN LATERAL (
      SELECT w.asyncoperationid IS NOT NULL
             AND (asyncjobs._is_admin(current_user::regrole)
                  OR (d.datname = current_database()
                      AND EXISTS (SELECT 1 FROM asyncjobs.job j
                                   WHERE j.asyncoperationid = w.asyncoperationid)))
             AS visible) v;

COMMENT ON VIEW asyncjobs.workers IS
'the live background workers of every database and the job each runs (where the role may see that job)';

-- The views read the tables as the querying role, so the policies apply.
ALTER VIEW asyncjobs.asyncoperation SET (security_invoker = true);
ALTER VIEW asyncjobs.bulkdeleteoperation SET (security_invoker = true);
ALTER VIEW asyncjobs.workers SET (security_invoker = true);
