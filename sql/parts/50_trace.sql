
/* sql/parts/50_trace.sql: the trace log */

-- Lines a job wrote with asyncjobs.trace(), kept per attempt with the
-- exception details and the run time (Dataverse's plug-in trace log).
-- Written by the worker in the transaction that records the attempt's
-- outcome, so the lines of a failed attempt survive its rollback.
CREATE TABLE asyncjobs.plugintracelog (
    plugintracelogid    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    asyncoperationid    bigint      NOT NULL,
    typename            text        NOT NULL,
    messagename         text        NOT NULL,
    depth               int         NOT NULL,
    correlationid       uuid        NOT NULL,
    messageblock        text,
    exceptiondetails    text,
    performanceexecutionstarttime timestamptz NOT NULL,
    performanceexecutionduration  int NOT NULL,
    createdon           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX plugintracelog_job_idx ON asyncjobs.plugintracelog (asyncoperationid);
CREATE INDEX plugintracelog_createdon_idx ON asyncjobs.plugintracelog (createdon);

COMMENT ON TABLE asyncjobs.plugintracelog IS
'trace lines and exception details of job attempts, per asyncjobs.trace_level';
COMMENT ON COLUMN asyncjobs.plugintracelog.typename IS 'the operation';
COMMENT ON COLUMN asyncjobs.plugintracelog.messagename IS
'the table event of a step''s job (INSERT, UPDATE, DELETE), else the operation';
COMMENT ON COLUMN asyncjobs.plugintracelog.performanceexecutionduration IS
'run time of the attempt, in milliseconds';

CREATE FUNCTION asyncjobs.trace(message text)
RETURNS void
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'asyncjobs_trace';

COMMENT ON FUNCTION asyncjobs.trace(text) IS
'inside a running job: appends a line to its trace log (outside a job: does nothing)';

SELECT pg_catalog.pg_extension_config_dump('asyncjobs.plugintracelog', '');
