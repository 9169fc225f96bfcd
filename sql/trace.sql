--
-- The trace log: asyncjobs.trace() lines, kept with the exception details
-- of failed attempts (asyncjobs.trace_level = exception, the default).
--
CREATE EXTENSION IF NOT EXISTS asyncjobs;

SHOW asyncjobs.trace_level;

-- outside a job, trace() does nothing
SELECT count(*) AS traces_before FROM asyncjobs.plugintracelog \gset
SELECT asyncjobs.trace('nobody listens');
SELECT asyncjobs.trace(NULL);
SELECT count(*) - :traces_before AS new_traces FROM asyncjobs.plugintracelog;

CREATE FUNCTION traced(data jsonb) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM asyncjobs.trace('starting with ' || data::text);
    FOR i IN 1 .. coalesce((data->>'lines')::int, 0) LOOP
        PERFORM asyncjobs.trace(format('line %s of %s', i, data->>'lines'));
    END LOOP;
    IF (data->>'fail')::boolean THEN
        PERFORM asyncjobs.trace('about to fail');
        RAISE EXCEPTION 'traced job failed' USING DETAIL = 'on purpose', ERRCODE = 'data_exception';
    END IF;
    RETURN 'ok';
END
$$;
SELECT asyncjobs.register_operation('traced', 'traced(jsonb)', max_retries => 1,
                                    retry_delay => '10 milliseconds');

-- a job that succeeds leaves no trace at this level
SELECT asyncjobs.enqueue('traced', '{"lines": 2}') AS ok_job \gset
SELECT asyncjobs.wait(:ok_job);
SELECT count(*) FROM asyncjobs.plugintracelog WHERE asyncoperationid = :ok_job;

-- a job that fails: its lines and its exception are kept, though the
-- attempt's transaction rolled back
SELECT asyncjobs.enqueue('traced', '{"lines": 2, "fail": true}') AS bad_job \gset
SELECT asyncjobs.wait(:bad_job);
SELECT typename, messagename, depth, messageblock, exceptiondetails,
       performanceexecutionduration >= 0 AS timed,
       performanceexecutionstarttime <= createdon AS ordered,
       correlationid = (SELECT correlationid FROM asyncjobs.asyncoperation
                         WHERE asyncoperationid = :bad_job) AS same_correlation
  FROM asyncjobs.plugintracelog WHERE asyncoperationid = :bad_job
 ORDER BY plugintracelogid;

-- at most 10 kB per attempt, the newest lines
SELECT asyncjobs.enqueue('traced', '{"lines": 3000, "fail": true}', max_retries => 0) AS big_job \gset
SELECT asyncjobs.wait(:big_job);
SELECT length(messageblock) <= 10240 + 60 AS bounded,
       split_part(messageblock, E'\n', 1) AS first_line,
       messageblock LIKE '%line 3000 of 3000%about to fail%' AS newest_kept,
       messageblock NOT LIKE '%starting with%' AS oldest_dropped
  FROM asyncjobs.plugintracelog WHERE asyncoperationid = :big_job;
