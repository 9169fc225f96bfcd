-- pgbench -R RATE -t N -f enqueue-latency.sql : one 'stamp' job per commit,
-- its data carrying clock_timestamp() taken in the enqueuing statement (just
-- before the commit), like shared/bench/floor/enqueue-latency.sql stamps created_at.
SELECT asyncjobs.enqueue('stamp', jsonb_build_object('t', clock_timestamp()));
