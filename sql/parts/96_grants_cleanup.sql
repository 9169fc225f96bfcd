/* sql/parts/96_grants_cleanup.sql */
-- cleanup() and schedule_cleanup() check their caller themselves (only
-- roles with the privileges of the extension's owner): executable by all,
-- so that others get a clear 42501 rather than "permission denied for
-- function".
GRANT EXECUTE ON FUNCTION
    asyncjobs.cleanup(interval, interval, interval),
    asyncjobs.schedule_cleanup(text)
    TO PUBLIC;
