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

-- the other levels: the workers follow the server's setting after a reload
CREATE PROCEDURE pg_temp.until_level(want_rows int, data jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    id   bigint;
    rows int;
    good int := 0;
BEGIN
    -- probe jobs until three in a row show the setting (every worker
    -- reloads at its next loop)
    FOR i IN 1 .. 100 LOOP
        id := asyncjobs.enqueue('traced', data);
        COMMIT;
        PERFORM asyncjobs.wait(id);
        SELECT count(*) INTO rows FROM asyncjobs.plugintracelog WHERE asyncoperationid = id;
        good := CASE WHEN rows = want_rows THEN good + 1 ELSE 0 END;
        IF good = 3 THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE EXCEPTION 'the workers did not follow asyncjobs.trace_level';
END
$$;

ALTER SYSTEM SET asyncjobs.trace_level = 'all';
SELECT pg_reload_conf();
CALL pg_temp.until_level(1, '{"lines": 1}');
-- all: a job that succeeds keeps its lines, without exception details
SELECT asyncjobs.enqueue('traced', '{"lines": 1}') AS all_job \gset
SELECT asyncjobs.wait(:all_job);
SELECT messageblock, exceptiondetails IS NULL AS no_exception
  FROM asyncjobs.plugintracelog WHERE asyncoperationid = :all_job;

ALTER SYSTEM SET asyncjobs.trace_level = 'off';
SELECT pg_reload_conf();
CALL pg_temp.until_level(0, '{"fail": true}');
-- off: not even a failed job leaves a trace
SELECT asyncjobs.enqueue('traced', '{"lines": 1, "fail": true}', max_retries => 0) AS off_job \gset
SELECT asyncjobs.wait(:off_job);
SELECT count(*) FROM asyncjobs.plugintracelog WHERE asyncoperationid = :off_job;

ALTER SYSTEM RESET asyncjobs.trace_level;
SELECT pg_reload_conf();
