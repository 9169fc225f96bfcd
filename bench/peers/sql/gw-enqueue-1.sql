-- pgbench -f gw-enqueue-1.sql : one graphile-worker job per transaction through
-- its SQL API (what addJob() calls).  Peer of shared/bench/floor/enqueue-1.sql.
\set n random(1, 1000000000)
SELECT graphile_worker.add_job('noop', json_build_object('n', :n::int));
