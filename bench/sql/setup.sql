-- bench/sql/setup.sql: the asyncjobs side of the benchmark (run once per cluster).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS asyncjobs;

-- 'noop': the cheapest possible job (an empty SQL function).
CREATE OR REPLACE FUNCTION public.bench_noop(jsonb) RETURNS void
LANGUAGE sql AS '';
SELECT asyncjobs.register_operation('noop', 'public.bench_noop(jsonb)');

-- 'stamp': records when its handler started, beside the enqueuer's stamp
-- (data->>'t', clock_timestamp() taken in the enqueuing statement, i.e.
-- just before that statement's commit).  Used by the wake-up latency test.
DROP TABLE IF EXISTS public.bench_latency;
CREATE TABLE public.bench_latency (
    job     bigint      NOT NULL,
    enq_ts  timestamptz NOT NULL,
    run_ts  timestamptz NOT NULL
);
CREATE OR REPLACE FUNCTION public.bench_stamp(d jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO public.bench_latency (job, enq_ts, run_ts)
    VALUES (asyncjobs.current_job(), (d ->> 't')::timestamptz, clock_timestamp())
$$;
SELECT asyncjobs.register_operation('stamp', 'public.bench_stamp(jsonb)');
