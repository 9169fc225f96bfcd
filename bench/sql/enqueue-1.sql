-- pgbench -f enqueue-1.sql : one job per transaction (jobs/s = tps).
-- Peer of shared/bench/floor/enqueue-1.sql.
SELECT asyncjobs.enqueue('noop', '{}');
