/* sql/parts/92_grants_external.sql */
GRANT EXECUTE ON FUNCTION
    asyncjobs.claim(text[], int, interval, text),
    asyncjobs.complete(bigint, uuid, jsonb),
    asyncjobs.fail(bigint, uuid, text, boolean),
    asyncjobs.heartbeat(bigint, uuid, interval)
    TO PUBLIC;
