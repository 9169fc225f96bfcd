-- pgbench -D batch=100 -f enqueue-many.sql : :batch jobs per transaction
-- through one asyncjobs.enqueue_many() call (jobs/s = tps * batch).
-- Peer of shared/bench/floor/enqueue-batch.sql.
SELECT count(*) FROM asyncjobs.enqueue_many('noop',
         ARRAY(SELECT jsonb_build_object('n', g) FROM generate_series(1, :batch) g));
