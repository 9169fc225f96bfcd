
/* sql/parts/99_grants_reports.sql: the dashboard, the HTML report and the metrics are for every role, over the jobs it may see */
GRANT SELECT ON asyncjobs.dashboard TO PUBLIC;
-- the API, and the pure helpers they call as the querying role
GRANT EXECUTE ON FUNCTION
    asyncjobs.report_html(interval),
    asyncjobs.metrics(),
    asyncjobs._dashboard(),
    asyncjobs._svg_hbars(text, text, text[], double precision[], text[], double precision, text),
    asyncjobs._html(text),
    asyncjobs._prom_label(text),
    asyncjobs._prom_value(double precision),
    asyncjobs._prom_family(text, text, text, text),
    asyncjobs._fmt_seconds(double precision),
    asyncjobs._fmt_percent(double precision),
    asyncjobs._fmt_interval(interval),
    asyncjobs._short(text, integer),
    asyncjobs._nice_step(double precision),
    asyncjobs._report_bin(interval),
    asyncjobs._check_since(interval, text)
    TO PUBLIC;
