-- psql -v n=N -f prefill.sql : queue N 'noop' jobs in one transaction
-- (workers paused), then VACUUM ANALYZE like shared/bench/floor/prefill.sql.
SELECT count(asyncjobs.enqueue('noop', jsonb_build_object('n', g))) FROM generate_series(1, :n) g;
VACUUM ANALYZE asyncjobs.job;
