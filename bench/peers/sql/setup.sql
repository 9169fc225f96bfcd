-- bench/peers/sql/setup.sql: the table the peers' latency handlers write to
-- (PgQ's consumer, graphile-worker's and pg-boss's handlers; asyncjobs and the
-- floor keep their own, see bench/sql/setup.sql and shared/bench/floor).
SET client_min_messages = warning;
DROP TABLE IF EXISTS public.peer_latency;
CREATE TABLE public.peer_latency (
    sys     text        NOT NULL,
    variant text        NOT NULL,
    enq_ts  timestamptz NOT NULL,   -- stamped by the enqueuer
    run_ts  timestamptz NOT NULL    -- the handler's clock when it started
);
