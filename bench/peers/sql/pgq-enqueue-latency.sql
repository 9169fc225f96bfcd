-- pgbench -R RATE -t N -f pgq-enqueue-latency.sql : one PgQ event per commit,
-- stamped with clock_timestamp() in the statement (as bench/sql/enqueue-latency.sql).
SELECT pgq.insert_event('bq', 'stamp', json_build_object('t', clock_timestamp())::text);
