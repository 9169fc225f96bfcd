-- psql -v sys=S -v variant=V -v n=N -f latency.sql : "done|p50|p95|p99|max" in
-- ms of run_ts - enq_ts in public.peer_latency.  Jobs that did not run count as
-- infinitely late, so a percentile that falls among them prints as empty.
WITH r AS (SELECT extract(epoch FROM run_ts - enq_ts) * 1000 AS ms
             FROM public.peer_latency WHERE sys = :'sys' AND variant = :'variant'),
     v AS (SELECT ms FROM r
           UNION ALL
           SELECT 'Infinity'::float8 FROM generate_series(1, greatest(:n - (SELECT count(*) FROM r), 0))),
     p AS (SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms) AS c,
                  max(ms) AS mx
             FROM v)
SELECT (SELECT count(*) FROM r),
       -- percentile_cont, unless the percentile falls among the missing jobs
       CASE WHEN c[1] IN ('Infinity', 'NaN') THEN NULL ELSE round(c[1]::numeric, 2) END,
       CASE WHEN c[2] IN ('Infinity', 'NaN') THEN NULL ELSE round(c[2]::numeric, 2) END,
       CASE WHEN c[3] IN ('Infinity', 'NaN') THEN NULL ELSE round(c[3]::numeric, 2) END,
       CASE WHEN mx = 'Infinity' THEN NULL ELSE round(mx::numeric, 2) END
  FROM p;
