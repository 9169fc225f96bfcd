
/* sql/parts/97_grants_bulkdelete.sql */
GRANT SELECT ON asyncjobs.bulkdeleteoperation, asyncjobs.bulkdeletefailure,
                asyncjobs.bulkdelete_progress TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    asyncjobs.bulk_delete(regclass, text, text, int, timestamptz, text, time, time),
    asyncjobs._check_condition(text),
    asyncjobs._key_expression(regclass, text)
    TO PUBLIC;
