-- psql -f latency.sql : wake-up latency of the 'stamp' jobs, in ms:
--   run  = handler's clock_timestamp() - enqueuer's clock_timestamp()  (the headline)
--   claim = job's startedon (now() of the worker's claim transaction) - enqueuer's stamp
--   e2e  = completedon (clock_timestamp() when the outcome was written) - enqueuer's stamp
WITH j AS (
    SELECT extract(epoch FROM l.run_ts - l.enq_ts) * 1000       AS run_ms,
           extract(epoch FROM h.startedon - l.enq_ts) * 1000    AS claim_ms,
           extract(epoch FROM h.completedon - l.enq_ts) * 1000  AS e2e_ms
      FROM public.bench_latency l
      JOIN asyncjobs.job_history h ON h.asyncoperationid = l.job)
SELECT count(*),
       round((percentile_cont(0.50) WITHIN GROUP (ORDER BY run_ms))::numeric, 2),
       round((percentile_cont(0.95) WITHIN GROUP (ORDER BY run_ms))::numeric, 2),
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY run_ms))::numeric, 2),
       round(max(run_ms)::numeric, 2),
       round((percentile_cont(0.50) WITHIN GROUP (ORDER BY claim_ms))::numeric, 2),
       round((percentile_cont(0.50) WITHIN GROUP (ORDER BY e2e_ms))::numeric, 2),
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY e2e_ms))::numeric, 2)
  FROM j;
