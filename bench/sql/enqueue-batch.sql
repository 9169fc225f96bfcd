-- pgbench -D batch=100 -f enqueue-batch.sql : :batch jobs per transaction
-- (jobs/s = tps * batch).  Peer of shared/bench/floor/enqueue-batch.sql.
SELECT asyncjobs.enqueue('noop', jsonb_build_object('n', g)) FROM generate_series(1, :batch) g;
