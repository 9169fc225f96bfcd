
/* sql/parts/99_grants_monitoring.sql: monitoring is for every role, over the jobs it may see */
GRANT SELECT ON asyncjobs.backlog, asyncjobs.stuck_jobs,
                asyncjobs.job_rollup, asyncjobs.backlog_sample,
                asyncjobs.monitor_state TO PUBLIC;
-- read-only helpers the views and functions above call as the querying role
GRANT EXECUTE ON FUNCTION
    asyncjobs.job_stats(interval),
    asyncjobs.failure_clusters(interval, interval),
    asyncjobs._failure_clusters(interval, interval),
    asyncjobs.health(),
    asyncjobs.normalize_message(text),
    asyncjobs.hist_merge(int4[]),
    asyncjobs._hist_merge(int4[], int4[]),
    asyncjobs._hist_quantile(int4[], float8),
    asyncjobs._hist_count(int4[]),
    asyncjobs._live_worker(bigint),
    asyncjobs._cleanup_schedule(),
    asyncjobs._database_workers(),
    asyncjobs._grade(double precision, double precision, double precision)
    TO PUBLIC;
