
/* sql/parts/98_grants_security.sql: the tables behind the views, rows filtered by policy */
GRANT SELECT ON asyncjobs.job, asyncjobs.job_history TO PUBLIC;
GRANT EXECUTE ON FUNCTION asyncjobs._visible_owners(), asyncjobs._is_admin(regrole) TO PUBLIC;
