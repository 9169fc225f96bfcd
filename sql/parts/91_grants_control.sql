
/* sql/parts/91_grants_control.sql */
GRANT EXECUTE ON FUNCTION
    asyncjobs.cancel(bigint),
    asyncjobs.pause(bigint),
    asyncjobs.resume(bigint),
    asyncjobs.postpone(bigint, timestamptz),
    asyncjobs.retry(bigint),
    asyncjobs.pause_operation(text),
    asyncjobs.resume_operation(text)
    TO PUBLIC;
