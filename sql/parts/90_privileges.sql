/* sql/parts/90_privileges.sql: privileges of every object above */

--------------------------------------------------------------------------
-- Privileges
--------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA asyncjobs FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA asyncjobs FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA asyncjobs FROM PUBLIC;

GRANT USAGE ON SCHEMA asyncjobs TO PUBLIC;
GRANT SELECT ON asyncjobs.asyncoperation, asyncjobs.operation_type,
                asyncjobs.status, asyncjobs.workers TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    asyncjobs.register_operation(text, regprocedure, int, interval, interval, interval, int, int),
    asyncjobs.enqueue(text, jsonb, text, int, timestamptz, text, text, int, text, text),
    asyncjobs.enqueue_sql(text, jsonb, text, int, timestamptz, text, text, int, text, text),
    asyncjobs.enqueue_many(text, jsonb[], text, int, timestamptz, text, text, int, text, text),
    asyncjobs.wait(bigint, interval),
    asyncjobs.current_job(),
    asyncjobs._workers()
    TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('asyncjobs.job', '');
SELECT pg_catalog.pg_extension_config_dump('asyncjobs.asyncoperation_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('asyncjobs.operation_type', 'WHERE NOT builtin');
