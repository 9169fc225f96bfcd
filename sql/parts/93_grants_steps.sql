
/* sql/parts/93_grants_steps.sql */
-- _step_fired is the trampoline the step trigger calls as the writing role:
-- it acts only on a job the caller may manage (see 30_steps.sql).
-- _step_trigger cannot be called except as a trigger; EXECUTE on it lets
-- a table's owner restore a dump of the table with its step triggers.
GRANT EXECUTE ON FUNCTION
    asyncjobs.register_step(regclass, text, text),
    asyncjobs.unregister_step(regclass, text, text),
    asyncjobs._step_fired(bigint),
    asyncjobs._step_trigger()
    TO PUBLIC;
-- the step trigger reads the registrations as the writing role
GRANT SELECT ON asyncjobs.step TO PUBLIC;
