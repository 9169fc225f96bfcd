-- pgbench -c 1 -T S -f pgq-consume-latency.sql : PgQ batch consumer for the
-- latency test.  Each event of a batch is "handled" by recording the clock when
-- the batch is read beside the enqueuer's stamp; no batch yet: sleep 1 ms and
-- poll again (as the floor's claim-poll.sql).  The batches come from pgqd's ticks.
BEGIN;
SELECT coalesce(pgq.next_batch('bq', 'bc'), 0) AS bid \gset
\if :bid > 0
INSERT INTO public.peer_latency (sys, variant, enq_ts, run_ts)
SELECT 'pgq', 'pgqd', (ev_data::json ->> 't')::timestamptz, clock_timestamp()
  FROM pgq.get_batch_events(:bid);
SELECT pgq.finish_batch(:bid);
COMMIT;
\else
COMMIT;
\sleep 1 ms
\endif
