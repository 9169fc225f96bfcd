
/* sql/parts/86_reports.sql: dashboard (psql \watch), report_html(), metrics() */

-- Everything here reads the monitoring objects of 85_monitoring.sql as the
-- calling role: the functions are plain (not SECURITY DEFINER) and the view
-- is security_invoker, so row-level security shows each role the figures
-- of its own jobs, and asyncjobs_admin all of them.

--------------------------------------------------------------------------
-- Small helpers (pure)
--------------------------------------------------------------------------

-- Text made safe for HTML and SVG, in element content and in quoted
-- attribute values alike.
CREATE FUNCTION asyncjobs._html(s text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT replace(replace(replace(replace(replace(s,
               '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;')
$$;

-- A Prometheus label value: backslash, double quote and line feed escaped.
CREATE FUNCTION asyncjobs._prom_label(s text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT replace(replace(replace(s, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n')
$$;

-- A Prometheus sample value (NaN, +Inf and -Inf spelt as the format wants).
CREATE FUNCTION asyncjobs._prom_value(v double precision)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN v IS NULL OR v = 'NaN'::float8 THEN 'NaN'
                WHEN v = 'Infinity'::float8 THEN '+Inf'
                WHEN v = '-Infinity'::float8 THEN '-Inf'
                WHEN v = trunc(v) AND abs(v) < 1e15 THEN trunc(v)::bigint::text
                ELSE v::text END
$$;

-- A duration in seconds for people: 850 us, 12.5 ms, 340 ms, 2.41 s,
-- 12.3 s, 4.5 min, 2.1 h, 3.2 d; "-" for NULL.
CREATE FUNCTION asyncjobs._fmt_seconds(s double precision)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
             WHEN s IS NULL OR s = 'NaN'::float8 THEN '-'
             WHEN s < 0.001 THEN round((s * 1e6)::numeric) || ' us'
             WHEN s < 0.1 THEN round((s * 1e3)::numeric, 1) || ' ms'
             WHEN s < 1 THEN round((s * 1e3)::numeric) || ' ms'
             WHEN s < 10 THEN round(s::numeric, 2) || ' s'
             WHEN s < 60 THEN round(s::numeric, 1) || ' s'
             WHEN s < 3600 THEN round((s / 60)::numeric, 1) || ' min'
             WHEN s < 172800 THEN round((s / 3600)::numeric, 1) || ' h'
             ELSE round((s / 86400)::numeric, 1) || ' d'
           END
$$;

-- A ratio (0..1) as a percentage with one decimal; "-" for NULL.
CREATE FUNCTION asyncjobs._fmt_percent(r double precision)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN r IS NULL THEN '-' ELSE round((r * 100)::numeric, 1) || ' %' END
$$;

-- An interval in words for titles: "1 day", "7 days", "15 minutes" (other
-- lengths as IntervalStyle spells them).
CREATE FUNCTION asyncjobs._fmt_interval(i interval)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN s % 86400 = 0 THEN (s / 86400)::bigint || CASE WHEN s = 86400 THEN ' day' ELSE ' days' END
                WHEN s % 3600 = 0 THEN (s / 3600)::bigint || CASE WHEN s = 3600 THEN ' hour' ELSE ' hours' END
                WHEN s % 60 = 0 THEN (s / 60)::bigint || CASE WHEN s = 60 THEN ' minute' ELSE ' minutes' END
                WHEN s % 1 = 0 THEN s::bigint || CASE WHEN s = 1 THEN ' second' ELSE ' seconds' END
                ELSE i::text END
      FROM (SELECT extract(epoch FROM i) AS s) e
$$;

-- A name for a fixed-width column: control characters (a newline would
-- break the line) shown as "?", and cut to width with "~" at the end.
CREATE FUNCTION asyncjobs._short(name text, width int)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN length(n) > width THEN left(n, width - 1) || '~' ELSE n END
      FROM (SELECT regexp_replace(name, '[[:cntrl:]]', '?', 'g') AS n) s
$$;

-- The step of a chart's value axis with four steps that reach v: 1, 2 or
-- 5 times a power of ten (1 for v <= 0).
CREATE FUNCTION asyncjobs._nice_step(v double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN v IS NULL OR v <= 0 OR v = 'NaN'::float8 THEN 1
           ELSE m * CASE WHEN v / 4 / m <= 1.000001 THEN 1
                         WHEN v / 4 / m <= 2.000001 THEN 2
                         WHEN v / 4 / m <= 5.000001 THEN 5
                         ELSE 10 END
           END
      FROM (SELECT power(10::float8, floor(log(greatest(v, 1e-300) / 4))) AS m) p
$$;

-- The width of the time bins of a report over "since": the finest of
-- 1, 5, 15 minutes, 1, 6 hours, 1, 7, 30 days that gives at most 72 bins
-- (whole days beyond).  Widths under an hour come only with windows of
-- 18 hours or less, inside the day that the rollups keep per minute.
-- Days are spelt as 24 hours: a bin is a fixed length of time (as for
-- date_bin), also when the time zone changes to or from summer time.
CREATE FUNCTION asyncjobs._report_bin(since interval)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT w FROM unnest('{1 minute, 5 minutes, 15 minutes, 1 hour, 6 hours, 24 hours, 168 hours, 720 hours}'::interval[]) w
          WHERE extract(epoch FROM since) <= 72 * extract(epoch FROM w)
          ORDER BY w LIMIT 1),
        make_interval(hours => 24 * ceil(extract(epoch FROM since) / 72 / 86400)::int))
$$;

-- Refuses a "since" that is NULL, not positive or infinite (22023), as
-- job_stats() does.
CREATE FUNCTION asyncjobs._check_since(since interval, example text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF since IS NULL OR since <= interval '0' OR isfinite(since) IS NOT TRUE THEN
        RAISE EXCEPTION 'since must be a positive interval, not %', coalesce(since::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('For example %s.', example);
    END IF;
END
$$;

--------------------------------------------------------------------------
-- dashboard: one screen for psql's \watch 2
--------------------------------------------------------------------------

-- The lines of the dashboard, in order.
CREATE FUNCTION asyncjobs._dashboard()
RETURNS SETOF text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    this_min timestamptz := date_trunc('minute', now());
    r        record;
    n        bigint;
    txt      text;
    want     int := current_setting('asyncjobs.max_workers')::int;
    t_ready  bigint;
    t_post   bigint;
    t_retry  bigint;
    t_paused bigint;
    t_dep    bigint;
    t_run    bigint;
    t_age    interval;
BEGIN
    -- title and health
    SELECT string_agg(s.status || ' ' || s.checks, ' | ' ORDER BY s.rank DESC)
      INTO txt
      FROM (SELECT h.status, CASE h.status WHEN 'CRIT' THEN 2 ELSE 1 END AS rank,
                   string_agg(h.check_name, ', ' ORDER BY h.check_name) AS checks
              FROM asyncjobs.health() h
             WHERE h.status <> 'OK'
             GROUP BY h.status) s;
    RETURN NEXT format('asyncjobs on %s   health: %s', current_database(), coalesce(txt, 'OK'));
    RETURN NEXT '';

    -- throughput: the minute so far, the minute before, the last hour
    SELECT coalesce(sum(x.succeeded) FILTER (WHERE x.bucket = this_min), 0) AS ok_0,
           coalesce(sum(x.failed) FILTER (WHERE x.bucket = this_min), 0) AS bad_0,
           coalesce(sum(x.canceled) FILTER (WHERE x.bucket = this_min), 0) AS can_0,
           coalesce(sum(x.retries) FILTER (WHERE x.bucket = this_min), 0) AS rt_0,
           coalesce(sum(x.succeeded) FILTER (WHERE x.bucket = this_min - interval '1 minute'), 0) AS ok_1,
           coalesce(sum(x.failed) FILTER (WHERE x.bucket = this_min - interval '1 minute'), 0) AS bad_1,
           coalesce(sum(x.canceled) FILTER (WHERE x.bucket = this_min - interval '1 minute'), 0) AS can_1,
           coalesce(sum(x.retries) FILTER (WHERE x.bucket = this_min - interval '1 minute'), 0) AS rt_1,
           coalesce(sum(x.succeeded), 0) AS ok_h, coalesce(sum(x.failed), 0) AS bad_h,
           coalesce(sum(x.canceled), 0) AS can_h, coalesce(sum(x.retries), 0) AS rt_h
      INTO r
      FROM asyncjobs.job_rollup x
     WHERE x.bucket >= now() - interval '1 hour';
    RETURN NEXT format('%-26s %12s %12s %12s', 'THROUGHPUT', 'this minute', 'last minute', 'last hour');
    RETURN NEXT format('  %-24s %12s %12s %12s', 'succeeded', r.ok_0, r.ok_1, r.ok_h);
    RETURN NEXT format('  %-24s %12s %12s %12s', 'failed', r.bad_0, r.bad_1, r.bad_h);
    RETURN NEXT format('  %-24s %12s %12s %12s', 'canceled', r.can_0, r.can_1, r.can_h);
    RETURN NEXT format('  %-24s %12s %12s %12s', 'retried', r.rt_0, r.rt_1, r.rt_h);
    RETURN NEXT format('  %-24s %12s %12s %12s', 'completed per second', '',
                       round((r.ok_1 + r.bad_1 + r.can_1) / 60.0, 2),
                       round((r.ok_h + r.bad_h + r.can_h) / 3600.0, 2));
    RETURN NEXT '';

    -- backlog by type: the operations with active jobs, busiest first
    RETURN NEXT format('%-26s %7s %9s %8s %6s %10s %7s %12s', 'BACKLOG', 'ready',
                       'postponed', 'retrying', 'paused', 'dependency', 'running', 'oldest ready');
    -- (one pass over the view: the totals are added up on the way)
    n := 0;
    t_ready := 0; t_post := 0; t_retry := 0; t_paused := 0; t_dep := 0; t_run := 0;
    t_age := NULL;
    FOR r IN
        SELECT b.*
          FROM asyncjobs.backlog b
         WHERE b.ready + b.postponed + b.retrying + b.paused + b.waiting_dependency
               + b.in_progress > 0
         ORDER BY b.ready DESC, b.in_progress DESC,
                  b.postponed + b.retrying + b.paused + b.waiting_dependency DESC,
                  b.operation COLLATE "C"
    LOOP
        n := n + 1;
        t_ready := t_ready + r.ready;
        t_post := t_post + r.postponed;
        t_retry := t_retry + r.retrying;
        t_paused := t_paused + r.paused;
        t_dep := t_dep + r.waiting_dependency;
        t_run := t_run + r.in_progress;
        t_age := greatest(t_age, r.oldest_ready_age);
        IF n <= 10 THEN
            RETURN NEXT format('  %-24s %7s %9s %8s %6s %10s %7s %12s',
                               asyncjobs._short(r.operation, 24),
                               r.ready, r.postponed, r.retrying, r.paused, r.waiting_dependency,
                               r.in_progress,
                               asyncjobs._fmt_seconds(extract(epoch FROM r.oldest_ready_age)::float8));
        END IF;
    END LOOP;
    IF n = 0 THEN
        RETURN NEXT '  (no active jobs)';
    ELSE
        IF n > 10 THEN
            RETURN NEXT format('  ... and %s more operations with active jobs', n - 10);
        END IF;
        IF n > 1 THEN
            RETURN NEXT format('  %-24s %7s %9s %8s %6s %10s %7s %12s', '(all)',
                               t_ready, t_post, t_retry, t_paused, t_dep, t_run,
                               asyncjobs._fmt_seconds(extract(epoch FROM t_age)::float8));
        END IF;
    END IF;
    RETURN NEXT '';

    -- failure rate and run time per type over the last hour
    RETURN NEXT format('%-26s %9s %7s %9s %9s %9s %9s', 'LAST HOUR BY TYPE', 'completed',
                       'failed', 'fail rate', 'p50', 'p95', 'p99');
    n := 0;
    FOR r IN
        SELECT s.*, s.succeeded + s.failed + s.canceled AS done, count(*) OVER () AS total
          FROM asyncjobs.job_stats('1 hour') s
         WHERE s.succeeded + s.failed + s.canceled > 0
         ORDER BY s.succeeded + s.failed + s.canceled DESC, s.operation COLLATE "C"
    LOOP
        n := n + 1;
        IF n > 10 THEN
            RETURN NEXT format('  ... and %s more operations', r.total - 10);
            EXIT;
        END IF;
        RETURN NEXT format('  %-24s %9s %7s %9s %9s %9s %9s',
                           asyncjobs._short(r.operation, 24),
                           r.done, r.failed, asyncjobs._fmt_percent(r.failure_rate),
                           asyncjobs._fmt_seconds(r.p50), asyncjobs._fmt_seconds(r.p95),
                           asyncjobs._fmt_seconds(r.p99));
    END LOOP;
    IF n = 0 THEN
        RETURN NEXT '  (no job completed in the last hour)';
    END IF;
    RETURN NEXT '';

    -- stuck jobs
    SELECT coalesce(sum(s.n), 0), string_agg(s.reason || ' ' || s.n, ', ' ORDER BY s.reason)
      INTO n, txt
      FROM (SELECT j.reason, count(*) AS n FROM asyncjobs.stuck_jobs j GROUP BY j.reason) s;
    RETURN NEXT format('%-26s %s', 'STUCK',
                       CASE WHEN n = 0 THEN 'none'
                            ELSE format('%s (%s): SELECT * FROM asyncjobs.stuck_jobs', n, txt) END);

    -- workers of this database
    SELECT count(*) AS up,
           count(*) FILTER (WHERE w.state = 'running') AS running,
           count(*) FILTER (WHERE w.state = 'claiming') AS claiming,
           count(*) FILTER (WHERE w.state = 'idle') AS idle
      INTO r
      FROM asyncjobs.workers w
     WHERE w.database = current_database() AND w.state IN ('idle', 'claiming', 'running');
    RETURN NEXT format('%-26s %s of %s up: %s running, %s claiming, %s idle%s', 'WORKERS',
                       r.up, want, r.running, r.claiming, r.idle,
                       CASE WHEN NOT current_setting('asyncjobs.enabled')::boolean
                            THEN ' (asyncjobs.enabled is off)' ELSE '' END);
    FOR r IN
        -- (the clock, not now(): the job may have started after this
        -- statement did)
        SELECT w.pid, w.operation, w.asyncoperationid,
               greatest(clock_timestamp() - w.since, interval '0') AS running_for
          FROM asyncjobs.workers w
         WHERE w.database = current_database() AND w.state = 'running'
         ORDER BY w.since, w.pid
         LIMIT 8
    LOOP
        RETURN NEXT format('  pid %-8s %-24s %-14s %s', r.pid,
                           coalesce(asyncjobs._short(r.operation, 24), '(not yours)'),
                           coalesce('job ' || r.asyncoperationid, ''),
                           coalesce('for ' || asyncjobs._fmt_seconds(extract(epoch FROM r.running_for)::float8), ''));
    END LOOP;
END
$$;

CREATE VIEW asyncjobs.dashboard AS
SELECT d.line
  FROM asyncjobs._dashboard() WITH ORDINALITY AS d(line, n)
 ORDER BY d.n;

ALTER VIEW asyncjobs.dashboard SET (security_invoker = true);

COMMENT ON VIEW asyncjobs.dashboard IS
'one screen for psql''s \watch 2: throughput, backlog by type, failure rate and p95 per type, stuck jobs, workers';

--------------------------------------------------------------------------
-- report_html(): one self-contained page with charts
--------------------------------------------------------------------------

-- A horizontal bar chart, one bar per label: the value axis from 0 to
-- vmax, each bar with its value written after it.
CREATE FUNCTION asyncjobs._svg_hbars(chart text, aria text, labels text[],
                                     vals double precision[], val_labels text[],
                                     vmax double precision, css text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n      int := coalesce(array_length(labels, 1), 0);
    w      int := 460;
    lw     int := 170;            -- label column
    vw     int := 70;             -- value text after the longest bar
    row_h  int := 22;
    top    int := 8;
    h      int := top + greatest(n, 1) * row_h + 24;
    pw     int := w - lw - vw;
    svg    text;
    i      int;
    bw     numeric;
    lab    text;
BEGIN
    svg := format('<svg class="chart hbars" id="chart-%s" data-chart="%s" data-bars="%s" '
                  'width="%s" height="%s" viewBox="0 0 %s %s" role="img" aria-label="%s">',
                  chart, chart, n, w, h, w, h, asyncjobs._html(aria));
    -- value axis: 0 and vmax
    svg := svg || format('<line class="axis" x1="%s" y1="%s" x2="%s" y2="%s"/>',
                         lw, top, lw, top + greatest(n, 1) * row_h);
    IF n = 0 THEN
        RETURN svg || format('<text class="empty" x="%s" y="%s">no data</text></svg>',
                             lw + 10, top + 15);
    END IF;
    FOR i IN 1 .. n LOOP
        lab := labels[i];
        bw := round((pw * greatest(coalesce(vals[i], 0), 0) / greatest(vmax, 1e-300))::numeric, 2);
        svg := svg || format(
            '<text class="label" x="%s" y="%s" text-anchor="end"><title>%s</title>%s</text>'
            '<rect class="bar %s" data-value="%s" x="%s" y="%s" width="%s" height="%s">'
            '<title>%s: %s</title></rect>'
            '<text class="value" x="%s" y="%s">%s</text>',
            lw - 6, top + (i - 1) * row_h + 15,
            asyncjobs._html(lab),
            asyncjobs._html(CASE WHEN length(lab) > 24 THEN left(lab, 23) || '…' ELSE lab END),
            css, vals[i], lw, top + (i - 1) * row_h + 4, bw, row_h - 8,
            asyncjobs._html(lab), asyncjobs._html(val_labels[i]),
            lw + bw + 4, top + (i - 1) * row_h + 15, asyncjobs._html(val_labels[i]));
    END LOOP;
    svg := svg || format('<text class="tick" x="%s" y="%s" text-anchor="start">0</text>'
                         '<text class="tick" x="%s" y="%s" text-anchor="end">%s</text>',
                         lw, h - 6, lw + pw, h - 6,
                         asyncjobs._html(CASE WHEN css = 'rate' THEN asyncjobs._fmt_percent(vmax)
                                              ELSE asyncjobs._fmt_seconds(vmax) END));
    RETURN svg || '</svg>';
END
$$;

CREATE FUNCTION asyncjobs.report_html(since interval DEFAULT '24 hours')
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    origin  CONSTANT timestamptz := '2000-01-01 00:00:00+00';
    -- chart geometry (px)
    cw      CONSTANT int := 960;
    ch      CONSTANT int := 260;
    ml      CONSTANT int := 56;
    mr      CONSTANT int := 16;
    mt      CONSTANT int := 12;
    mb      CONSTANT int := 36;
    pw      CONSTANT numeric := cw - ml - mr;
    ph      CONSTANT numeric := ch - mt - mb;
    t_end   timestamptz := now();
    t0      timestamptz;
    bin     interval;
    bins    timestamptz[];
    nb      int;
    ok_a    bigint[];
    bad_a   bigint[];
    can_a   bigint[];
    rdy_a   bigint[];
    sus_a   bigint[];
    run_a   bigint[];
    slot    numeric;
    bw      numeric;
    step    float8;
    ymax    float8;
    lab_fmt text;
    lab_every int;
    x       numeric;
    y       numeric;
    hgt     numeric;
    i       int;
    k       int;
    svg     text;
    html    text;
    sum_r   record;
    r       record;
    ops     text[];
    vals    float8[];
    vlabs   text[];
    tz      text := current_setting('TimeZone');
    pts     text;
    dots    text;
    bin_word text;
    n_more  bigint;
BEGIN
    PERFORM asyncjobs._check_since(since,
        'asyncjobs.report_html(''24 hours'') or asyncjobs.report_html(''7 days'')');
    t0 := t_end - since;
    bin := asyncjobs._report_bin(since);
    bin_word := regexp_replace(asyncjobs._fmt_interval(bin), '^1 ', '');
    SELECT array_agg(b ORDER BY b) INTO bins
      FROM generate_series(date_bin(bin, t0, origin), t_end, bin) b;
    nb := array_length(bins, 1);
    lab_fmt := CASE WHEN bin >= interval '1 day' THEN 'YYYY-MM-DD'
                    WHEN since <= interval '1 day' THEN 'HH24:MI'
                    ELSE 'MM-DD HH24:MI' END;
    lab_every := greatest(1, ceil(nb / 12.0)::int);
    slot := pw / nb;
    bw := greatest(round(slot * 0.78, 2), 1);

    -- completions per bin and outcome
    SELECT array_agg(coalesce(s.ok, 0) ORDER BY b.b), array_agg(coalesce(s.bad, 0) ORDER BY b.b),
           array_agg(coalesce(s.can, 0) ORDER BY b.b)
      INTO ok_a, bad_a, can_a
      FROM unnest(bins) b(b)
      LEFT JOIN (SELECT date_bin(bin, x.bucket, origin) AS b, sum(x.succeeded) AS ok,
                        sum(x.failed) AS bad, sum(x.canceled) AS can
                   FROM asyncjobs.job_rollup x
                  WHERE x.bucket >= t0
                  GROUP BY 1) s ON s.b = b.b;

    -- backlog per bin: the peak of each figure over the samples of the bin
    -- (a minute without a sample had no active job)
    SELECT array_agg(coalesce(s.rdy, 0) ORDER BY b.b), array_agg(coalesce(s.sus, 0) ORDER BY b.b),
           array_agg(coalesce(s.run, 0) ORDER BY b.b)
      INTO rdy_a, sus_a, run_a
      FROM unnest(bins) b(b)
      LEFT JOIN (SELECT date_bin(bin, t.sampled_at, origin) AS b, max(t.rdy) AS rdy,
                        max(t.sus) AS sus, max(t.run) AS run
                   FROM (SELECT x.sampled_at, sum(x.ready) AS rdy, sum(x.suspended) AS sus,
                                sum(x.in_progress) AS run
                           FROM asyncjobs.backlog_sample x
                          WHERE x.sampled_at >= t0
                          GROUP BY x.sampled_at) t
                  GROUP BY 1) s ON s.b = b.b;

    -- the window's totals
    SELECT coalesce(sum(x.succeeded), 0) AS ok, coalesce(sum(x.failed), 0) AS bad,
           coalesce(sum(x.canceled), 0) AS can, coalesce(sum(x.retries), 0) AS retries,
           asyncjobs._hist_quantile(asyncjobs.hist_merge(x.duration_hist), 0.95) AS p95
      INTO sum_r
      FROM asyncjobs.job_rollup x
     WHERE x.bucket >= t0;

    ----------------------------------------------------------------------
    -- head
    ----------------------------------------------------------------------
    html := '<!DOCTYPE html>' || E'\n'
         || '<html lang="en"><head><meta charset="utf-8">'
         || '<meta name="viewport" content="width=device-width, initial-scale=1">'
         || format('<title>asyncjobs report: %s, last %s</title>',
                   asyncjobs._html(current_database()), asyncjobs._html(asyncjobs._fmt_interval(since)))
         || '<style>'
         || 'body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1f2328;background:#fff}'
         || 'h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}'
         || '.meta{color:#59636e;margin:0 0 16px}'
         || '.tiles{display:flex;flex-wrap:wrap;gap:10px}'
         || '.tile{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;min-width:110px}'
         || '.tile .k{display:block;color:#59636e;font-size:12px}.tile .v{display:block;font-size:20px;font-weight:600}'
         || '.tile.CRIT .v,.CRIT{color:#b42318}.tile.WARN .v,.WARN{color:#9a6700}.OK{color:#1a7f37}'
         || '.charts{display:flex;flex-wrap:wrap;gap:24px}figure{margin:0}figcaption{color:#59636e;margin-bottom:4px}'
         || 'svg.chart{display:block;max-width:100%;height:auto;font-size:11px}'
         || 'svg .axis{stroke:#59636e;stroke-width:1}svg .grid{stroke:#d0d7de;stroke-width:1}'
         || 'svg text{fill:#1f2328}svg .tick{fill:#59636e}svg .empty{fill:#59636e;font-size:13px}'
         || 'svg .ok{fill:#2da44e}svg .failed{fill:#cf222e}svg .canceled{fill:#8c959f}'
         || 'svg .rate{fill:#cf222e}svg .p95{fill:#0969da}'
         || 'svg .line{fill:none;stroke-width:2}svg .line.ready{stroke:#0969da}svg .line.suspended{stroke:#bf8700}svg .line.in_progress{stroke:#8250df}'
         || 'svg .pt.ready{fill:#0969da}svg .pt.suspended{fill:#bf8700}svg .pt.in_progress{fill:#8250df}'
         || '.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}'
         || 'table{border-collapse:collapse;margin-top:8px}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}'
         || 'th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}'
         || 'code{font-size:12px}.note{color:#59636e}'
         || '</style></head><body>' || E'\n';

    html := html || '<h1>asyncjobs report</h1>'
         || format('<p class="meta">database <b>%s</b> &middot; %s to %s (%s) &middot; last %s &middot; %s per bar &middot; figures of the jobs visible to role <b>%s</b></p>',
                   asyncjobs._html(current_database()),
                   to_char(t0, 'YYYY-MM-DD HH24:MI'), to_char(t_end, 'YYYY-MM-DD HH24:MI'),
                   asyncjobs._html(tz), asyncjobs._html(asyncjobs._fmt_interval(since)), asyncjobs._html(asyncjobs._fmt_interval(bin)),
                   asyncjobs._html(current_user))
         || E'\n';

    ----------------------------------------------------------------------
    -- summary tiles
    ----------------------------------------------------------------------
    SELECT coalesce(sum(b.ready), 0) AS ready, coalesce(sum(b.in_progress), 0) AS running,
           max(b.oldest_ready_age) AS age
      INTO r FROM asyncjobs.backlog b;
    html := html || '<section id="summary" class="tiles">'
         || format('<div class="tile"><span class="k">completed</span><span class="v">%s</span></div>',
                   sum_r.ok + sum_r.bad + sum_r.can)
         || format('<div class="tile"><span class="k">succeeded</span><span class="v">%s</span></div>', sum_r.ok)
         || format('<div class="tile"><span class="k">failed</span><span class="v">%s</span></div>', sum_r.bad)
         || format('<div class="tile"><span class="k">canceled</span><span class="v">%s</span></div>', sum_r.can)
         || format('<div class="tile"><span class="k">failure rate</span><span class="v">%s</span></div>',
                   asyncjobs._fmt_percent(CASE WHEN sum_r.ok + sum_r.bad > 0
                                               THEN sum_r.bad::float8 / (sum_r.ok + sum_r.bad) END))
         || format('<div class="tile"><span class="k">retries</span><span class="v">%s</span></div>', sum_r.retries)
         || format('<div class="tile"><span class="k">p95 run time</span><span class="v">%s</span></div>',
                   asyncjobs._html(asyncjobs._fmt_seconds(sum_r.p95)))
         || format('<div class="tile"><span class="k">ready now</span><span class="v">%s</span></div>', r.ready)
         || format('<div class="tile"><span class="k">running now</span><span class="v">%s</span></div>', r.running)
         || format('<div class="tile"><span class="k">oldest ready</span><span class="v">%s</span></div>',
                   asyncjobs._html(asyncjobs._fmt_seconds(extract(epoch FROM r.age)::float8)))
         || format('<div class="tile"><span class="k">stuck</span><span class="v">%s</span></div>',
                   (SELECT count(*) FROM asyncjobs.stuck_jobs))
         || format('<div class="tile"><span class="k">workers</span><span class="v">%s of %s</span></div>',
                   asyncjobs._database_workers(), current_setting('asyncjobs.max_workers'))
         || '</section>' || E'\n';

    ----------------------------------------------------------------------
    -- chart 1: jobs per bin by outcome (stacked bars)
    ----------------------------------------------------------------------
    step := asyncjobs._nice_step((SELECT max(o + f + c) FROM unnest(ok_a, bad_a, can_a) u(o, f, c)));
    step := greatest(step, 1);
    ymax := 4 * step;
    svg := format('<svg class="chart bars" id="chart-throughput" data-chart="throughput" data-bins="%s" '
                  'width="%s" height="%s" viewBox="0 0 %s %s" role="img" aria-label="jobs per %s by outcome">',
                  nb, cw, ch, cw, ch, asyncjobs._html(asyncjobs._fmt_interval(bin)));
    FOR k IN 0 .. 4 LOOP
        y := round(mt + ph - k * ph / 4, 2);
        svg := svg || format('<line class="grid" x1="%s" y1="%s" x2="%s" y2="%s"/>'
                             '<text class="tick" x="%s" y="%s" text-anchor="end">%s</text>',
                             ml, y, cw - mr, y, ml - 6, y + 4, asyncjobs._prom_value(k * step));
    END LOOP;
    FOR i IN 1 .. nb LOOP
        x := round(ml + (i - 1) * slot + (slot - bw) / 2, 2);
        y := mt + ph;
        FOR r IN SELECT * FROM (VALUES (1, 'ok', 'succeeded', ok_a[i]), (2, 'failed', 'failed', bad_a[i]),
                                       (3, 'canceled', 'canceled', can_a[i])) v(ord, css, what, n)
                  WHERE v.n > 0 ORDER BY v.ord
        LOOP
            hgt := round((r.n / ymax * ph)::numeric, 2);
            y := y - hgt;
            svg := svg || format('<rect class="bar %s" data-value="%s" x="%s" y="%s" width="%s" height="%s">'
                                 '<title>%s: %s %s</title></rect>',
                                 r.css, r.n, x, round(y, 2), bw, hgt,
                                 to_char(bins[i], 'YYYY-MM-DD HH24:MI'), r.n, r.what);
        END LOOP;
        IF (i - 1) % lab_every = 0 THEN
            svg := svg || format('<text class="tick" x="%s" y="%s" text-anchor="middle">%s</text>',
                                 round(ml + (i - 0.5) * slot, 2), mt + ph + 16,
                                 to_char(bins[i], lab_fmt));
        END IF;
    END LOOP;
    svg := svg || format('<line class="axis" x1="%s" y1="%s" x2="%s" y2="%s"/></svg>',
                         ml, mt + ph, cw - mr, mt + ph);
    html := html || '<section id="throughput">'
         || format('<h2>Jobs per %s by outcome</h2>', asyncjobs._html(bin_word))
         || '<p class="legend"><span><i style="background:#2da44e"></i>succeeded</span>'
         || '<span><i style="background:#cf222e"></i>failed</span>'
         || '<span><i style="background:#8c959f"></i>canceled</span></p>'
         || svg || '</section>' || E'\n';

    ----------------------------------------------------------------------
    -- charts 2 and 3: failure rate and p95 per operation, and the table
    ----------------------------------------------------------------------
    SELECT array_agg(s.operation ORDER BY s.operation COLLATE "C"),
           array_agg(coalesce(s.failure_rate, 0) ORDER BY s.operation COLLATE "C"),
           array_agg(asyncjobs._fmt_percent(s.failure_rate) ||
                     format(' (%s/%s)', s.failed, s.succeeded + s.failed) ORDER BY s.operation COLLATE "C")
      INTO ops, vals, vlabs
      FROM asyncjobs.job_stats(since) s
     WHERE s.succeeded + s.failed > 0;
    html := html || '<section id="per-type"><h2>Failure rate and p95 run time by operation</h2>'
         || '<div class="charts"><figure><figcaption>failure rate (failed / finished)</figcaption>'
         || asyncjobs._svg_hbars('failure-rate', 'failure rate by operation', ops, vals, vlabs,
                                 CASE WHEN coalesce((SELECT max(v) FROM unnest(vals) v), 0) > 0.5
                                      THEN 1.0 ELSE least(4 * asyncjobs._nice_step((SELECT max(v) FROM unnest(vals) v)), 1.0) END,
                                 'rate')
         || '</figure>';
    SELECT array_agg(s.operation ORDER BY s.operation COLLATE "C"),
           array_agg(s.p95 ORDER BY s.operation COLLATE "C"),
           array_agg(asyncjobs._fmt_seconds(s.p95) ORDER BY s.operation COLLATE "C")
      INTO ops, vals, vlabs
      FROM asyncjobs.job_stats(since) s
     WHERE s.p95 IS NOT NULL;
    html := html || '<figure><figcaption>p95 run time</figcaption>'
         || asyncjobs._svg_hbars('p95', 'p95 run time by operation', ops, vals, vlabs,
                                 4 * asyncjobs._nice_step((SELECT max(v) FROM unnest(vals) v)), 'p95')
         || '</figure></div>';
    html := html || '<table id="job-stats"><thead><tr><th>operation</th><th>succeeded</th><th>failed</th>'
         || '<th>canceled</th><th>failure rate</th><th>retries</th><th>p50</th><th>p95</th><th>p99</th>'
         || '<th>mean</th><th>jobs/min</th></tr></thead><tbody>';
    k := 0;
    FOR r IN SELECT * FROM asyncjobs.job_stats(since) s ORDER BY s.operation COLLATE "C" LOOP
        k := k + 1;
        html := html || format('<tr><td>%s</td><td class="n">%s</td><td class="n">%s</td><td class="n">%s</td>'
                               '<td class="n">%s</td><td class="n">%s</td><td class="n">%s</td><td class="n">%s</td>'
                               '<td class="n">%s</td><td class="n">%s</td><td class="n">%s</td></tr>',
                               asyncjobs._html(r.operation), r.succeeded, r.failed, r.canceled,
                               asyncjobs._fmt_percent(r.failure_rate), r.retries,
                               asyncjobs._html(asyncjobs._fmt_seconds(r.p50)),
                               asyncjobs._html(asyncjobs._fmt_seconds(r.p95)),
                               asyncjobs._html(asyncjobs._fmt_seconds(r.p99)),
                               asyncjobs._html(asyncjobs._fmt_seconds(r.mean)),
                               round(r.jobs_per_minute::numeric, 2));
    END LOOP;
    IF k = 0 THEN
        html := html || '<tr><td colspan="11" class="note">no job completed in this window</td></tr>';
    END IF;
    html := html || '</tbody></table></section>' || E'\n';

    ----------------------------------------------------------------------
    -- chart 4: backlog over time (lines)
    ----------------------------------------------------------------------
    step := greatest(asyncjobs._nice_step((SELECT max(greatest(a, b, c))
                                             FROM unnest(rdy_a, sus_a, run_a) u(a, b, c))), 1);
    ymax := 4 * step;
    svg := format('<svg class="chart lines" id="chart-backlog" data-chart="backlog" data-bins="%s" '
                  'width="%s" height="%s" viewBox="0 0 %s %s" role="img" aria-label="backlog over time">',
                  nb, cw, ch, cw, ch);
    FOR k IN 0 .. 4 LOOP
        y := round(mt + ph - k * ph / 4, 2);
        svg := svg || format('<line class="grid" x1="%s" y1="%s" x2="%s" y2="%s"/>'
                             '<text class="tick" x="%s" y="%s" text-anchor="end">%s</text>',
                             ml, y, cw - mr, y, ml - 6, y + 4, asyncjobs._prom_value(k * step));
    END LOOP;
    FOR i IN 1 .. nb LOOP
        IF (i - 1) % lab_every = 0 THEN
            svg := svg || format('<text class="tick" x="%s" y="%s" text-anchor="middle">%s</text>',
                                 round(ml + (i - 0.5) * slot, 2), mt + ph + 16,
                                 to_char(bins[i], lab_fmt));
        END IF;
    END LOOP;
    FOR r IN SELECT * FROM (VALUES (1, 'ready', rdy_a), (2, 'suspended', sus_a),
                                   (3, 'in_progress', run_a)) v(ord, css, a) ORDER BY v.ord
    LOOP
        SELECT string_agg(round(ml + (u.i - 0.5) * slot, 2) || ',' ||
                          round((mt + ph - u.n / ymax * ph)::numeric, 2), ' ' ORDER BY u.i),
               string_agg(format('<circle class="pt %s" data-value="%s" cx="%s" cy="%s" r="2.5"><title>%s: %s %s</title></circle>',
                                 r.css, u.n, round(ml + (u.i - 0.5) * slot, 2),
                                 round((mt + ph - u.n / ymax * ph)::numeric, 2),
                                 to_char(bins[u.i], 'YYYY-MM-DD HH24:MI'), u.n,
                                 replace(r.css, '_', ' ')), '' ORDER BY u.i)
          INTO pts, dots
          FROM unnest(r.a) WITH ORDINALITY u(n, i);
        svg := svg || format('<polyline class="line %s" data-series="%s" points="%s"/>', r.css, r.css, pts)
             || dots;
    END LOOP;
    svg := svg || format('<line class="axis" x1="%s" y1="%s" x2="%s" y2="%s"/></svg>',
                         ml, mt + ph, cw - mr, mt + ph);
    html := html || '<section id="backlog">'
         || format('<h2>Backlog over time</h2><p class="note">the peak of each figure per %s, from the samples taken every minute (hourly after two days)</p>',
                   asyncjobs._html(bin_word))
         || '<p class="legend"><span><i style="background:#0969da"></i>ready</span>'
         || '<span><i style="background:#bf8700"></i>suspended (postponed, retrying, paused, waiting)</span>'
         || '<span><i style="background:#8250df"></i>in progress</span></p>'
         || svg || '</section>' || E'\n';

    ----------------------------------------------------------------------
    -- failure clusters
    ----------------------------------------------------------------------
    html := html || '<section id="failures"><h2>Failure clusters</h2>'
         || format('<p class="note">failed jobs per %s, SQLSTATE and message with values folded out (asyncjobs.failure_clusters), the largest first</p>',
                   asyncjobs._html(bin_word))
         || '<table id="failure-clusters"><thead><tr><th>from</th><th>SQLSTATE</th><th>message pattern</th>'
         || '<th>failures</th><th>first</th><th>last</th><th>operations</th></tr></thead><tbody>';
    k := 0;
    n_more := 0;
    FOR r IN SELECT f.*, count(*) OVER () AS total
               FROM asyncjobs.failure_clusters(since, bin) f
              ORDER BY f.failures DESC, f.bucket DESC, f.errorcode COLLATE "C", f.pattern COLLATE "C"
              LIMIT 50
    LOOP
        k := k + 1;
        n_more := r.total - 50;
        html := html || format('<tr><td>%s</td><td><code>%s</code></td><td>%s</td><td class="n">%s</td>'
                               '<td>%s</td><td>%s</td><td>%s</td></tr>',
                               to_char(r.bucket, 'YYYY-MM-DD HH24:MI'),
                               asyncjobs._html(coalesce(r.errorcode, '')),
                               asyncjobs._html(CASE WHEN length(r.pattern) > 300
                                                    THEN left(r.pattern, 299) || '…' ELSE r.pattern END),
                               r.failures,
                               to_char(r.first_seen, 'YYYY-MM-DD HH24:MI:SS'),
                               to_char(r.last_seen, 'YYYY-MM-DD HH24:MI:SS'),
                               asyncjobs._html(array_to_string(r.operations, ', ')));
    END LOOP;
    IF k = 0 THEN
        html := html || '<tr><td colspan="7" class="note">no job failed in this window</td></tr>';
    END IF;
    html := html || '</tbody></table>';
    IF n_more > 0 THEN
        html := html || format('<p class="note">and %s smaller clusters</p>', n_more);
    END IF;
    html := html || '</section>' || E'\n';

    ----------------------------------------------------------------------
    -- health checks, now
    ----------------------------------------------------------------------
    html := html || '<section id="health"><h2>Health now</h2>'
         || '<table id="health-checks"><thead><tr><th>check</th><th>status</th><th>value</th>'
         || '<th>detail</th><th>what to do</th></tr></thead><tbody>';
    FOR r IN SELECT * FROM asyncjobs.health() LOOP
        html := html || format('<tr><td>%s</td><td class="%s"><b>%s</b></td><td class="n">%s</td><td>%s</td><td>%s</td></tr>',
                               asyncjobs._html(r.check_name), asyncjobs._html(r.status),
                               asyncjobs._html(r.status),
                               asyncjobs._html(coalesce(round(r.value::numeric, 3)::text, '')),
                               asyncjobs._html(coalesce(r.detail, '')),
                               CASE WHEN r.action IS NULL THEN ''
                                    ELSE '<code>' || asyncjobs._html(r.action) || '</code>' END);
    END LOOP;
    html := html || '</tbody></table></section>' || E'\n';

    html := html || format('<footer class="note"><p>asyncjobs.report_html(%s) at %s</p></footer>',
                           asyncjobs._html(quote_literal(since::text)),
                           to_char(t_end, 'YYYY-MM-DD HH24:MI:SS TZ'))
         || E'\n</body></html>\n';
    RETURN html;
END
$$;

COMMENT ON FUNCTION asyncjobs.report_html(interval) IS
'one self-contained HTML page over the last "since": jobs per hour by outcome, failure rate and p95 per operation, backlog over time, failure clusters, health';

--------------------------------------------------------------------------
-- metrics(): Prometheus text exposition format
--------------------------------------------------------------------------

-- One metric family: its # HELP and # TYPE lines, then its samples (one
-- a line, or none).
CREATE FUNCTION asyncjobs._prom_family(name text, kind text, help text, samples text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format(E'# HELP %s %s\n# TYPE %s %s\n', name,
                  replace(replace(help, E'\\', E'\\\\'), E'\n', E'\\n'), name, kind)
           || coalesce(samples || E'\n', '')
$$;

CREATE FUNCTION asyncjobs.metrics()
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    db    text := 'database="' || asyncjobs._prom_label(current_database()) || '"';
    out   text := '';
    lines text;
    -- per operation, from every rollup kept
    ops   text[];
    ok    bigint[];
    bad   bigint[];
    can   bigint[];
    rt    bigint[];
    lp    bigint[];
    dsum  float8[];
    dcnt  bigint[];
    ages  text;
BEGIN
    SELECT array_agg(t.operation ORDER BY t.operation COLLATE "C"),
           array_agg(t.ok ORDER BY t.operation COLLATE "C"),
           array_agg(t.bad ORDER BY t.operation COLLATE "C"),
           array_agg(t.can ORDER BY t.operation COLLATE "C"),
           array_agg(t.rt ORDER BY t.operation COLLATE "C"),
           array_agg(t.lp ORDER BY t.operation COLLATE "C"),
           array_agg(t.dsum ORDER BY t.operation COLLATE "C"),
           array_agg(coalesce(asyncjobs._hist_count(t.hist), 0) ORDER BY t.operation COLLATE "C")
      INTO ops, ok, bad, can, rt, lp, dsum, dcnt
      FROM (SELECT r.operation, sum(r.succeeded)::bigint AS ok, sum(r.failed)::bigint AS bad,
                   sum(r.canceled)::bigint AS can, sum(r.retries)::bigint AS rt,
                   sum(r.loops)::bigint AS lp, sum(r.duration_sum) AS dsum,
                   asyncjobs.hist_merge(r.duration_hist) AS hist
              FROM asyncjobs.job_rollup r
             GROUP BY r.operation) t;

    -- counters
    SELECT string_agg(format('asyncjobs_jobs_completed_total{%s,operation="%s",status="%s"} %s',
                             db, asyncjobs._prom_label(u.op), s.status, s.n), E'\n'
                      ORDER BY u.i, s.ord)
      INTO lines
      FROM unnest(ops, ok, bad, can) WITH ORDINALITY u(op, ok, bad, can, i)
     CROSS JOIN LATERAL (VALUES (1, 'succeeded', u.ok), (2, 'failed', u.bad),
                                (3, 'canceled', u.can)) s(ord, status, n);
    out := out || asyncjobs._prom_family('asyncjobs_jobs_completed_total', 'counter',
        'Jobs completed, by operation and final status, over the rollups kept (asyncjobs.retention_rollups).',
        lines);

    SELECT string_agg(format('asyncjobs_job_retries_total{%s,operation="%s"} %s',
                             db, asyncjobs._prom_label(u.op), u.n), E'\n' ORDER BY u.i)
      INTO lines FROM unnest(ops, rt) WITH ORDINALITY u(op, n, i);
    out := out || asyncjobs._prom_family('asyncjobs_job_retries_total', 'counter',
        'Attempts that failed with a transient error and were retried, by operation.', lines);

    SELECT string_agg(format('asyncjobs_job_loop_detections_total{%s,operation="%s"} %s',
                             db, asyncjobs._prom_label(u.op), u.n), E'\n' ORDER BY u.i)
      INTO lines FROM unnest(ops, lp) WITH ORDINALITY u(op, n, i);
    out := out || asyncjobs._prom_family('asyncjobs_job_loop_detections_total', 'counter',
        'Jobs failed by loop protection (AJ002, infinite loop detected), by operation.', lines);

    -- run time: quantiles over the last hour, sum and count over all rollups
    SELECT string_agg(format(E'asyncjobs_job_duration_seconds{%1$s,operation="%2$s",quantile="0.5"} %3$s\n'
                             || E'asyncjobs_job_duration_seconds{%1$s,operation="%2$s",quantile="0.95"} %4$s\n'
                             || E'asyncjobs_job_duration_seconds{%1$s,operation="%2$s",quantile="0.99"} %5$s\n'
                             || E'asyncjobs_job_duration_seconds_sum{%1$s,operation="%2$s"} %6$s\n'
                             || 'asyncjobs_job_duration_seconds_count{%1$s,operation="%2$s"} %7$s',
                             db, l.op, asyncjobs._prom_value(s.p50), asyncjobs._prom_value(s.p95),
                             asyncjobs._prom_value(s.p99), asyncjobs._prom_value(u.dsum), u.dcnt),
                      E'\n' ORDER BY u.i)
      INTO lines
      FROM unnest(ops, dsum, dcnt) WITH ORDINALITY u(op, dsum, dcnt, i)
     CROSS JOIN LATERAL (SELECT asyncjobs._prom_label(u.op) AS op) l
      LEFT JOIN asyncjobs.job_stats('1 hour') s ON s.operation = u.op
     WHERE u.dcnt > 0;
    out := out || asyncjobs._prom_family('asyncjobs_job_duration_seconds', 'summary',
        'Run time of finished jobs (succeeded or failed) in seconds: quantiles over the last hour (within 5 %, NaN without jobs), sum and count over the rollups kept.',
        lines);

    SELECT string_agg(format('asyncjobs_job_failure_ratio{%s,operation="%s"} %s',
                             db, asyncjobs._prom_label(s.operation),
                             asyncjobs._prom_value(s.failure_rate)), E'\n'
                      ORDER BY s.operation COLLATE "C")
      INTO lines
      FROM asyncjobs.job_stats('1 hour') s
     WHERE s.failure_rate IS NOT NULL;
    out := out || asyncjobs._prom_family('asyncjobs_job_failure_ratio', 'gauge',
        'Failed / (succeeded + failed) over the last hour, by operation (absent without finished jobs).',
        lines);

    -- backlog now
    SELECT string_agg(format('asyncjobs_backlog_jobs{%s,operation="%s",state="%s"} %s',
                             db, asyncjobs._prom_label(b.operation), s.state, s.n), E'\n'
                      ORDER BY b.operation COLLATE "C", s.ord),
           string_agg(format('asyncjobs_backlog_oldest_ready_seconds{%s,operation="%s"} %s',
                             db, asyncjobs._prom_label(b.operation),
                             asyncjobs._prom_value(coalesce(extract(epoch FROM b.oldest_ready_age)::float8, 0))),
                      E'\n' ORDER BY b.operation COLLATE "C") FILTER (WHERE s.ord = 1)
      INTO lines, ages
      FROM asyncjobs.backlog b
     CROSS JOIN LATERAL (VALUES (1, 'ready', b.ready), (2, 'postponed', b.postponed),
                                (3, 'retrying', b.retrying), (4, 'paused', b.paused),
                                (5, 'waiting_dependency', b.waiting_dependency),
                                (6, 'in_progress', b.in_progress)) s(ord, state, n);
    out := out || asyncjobs._prom_family('asyncjobs_backlog_jobs', 'gauge',
        'Jobs not completed, by operation and why they wait: ready, postponed, retrying, paused, waiting_dependency, in_progress.',
        lines);
    out := out || asyncjobs._prom_family('asyncjobs_backlog_oldest_ready_seconds', 'gauge',
        'How long the oldest ready job of the operation has been due, in seconds (0 when none is ready).',
        ages);

    out := out || asyncjobs._prom_family('asyncjobs_stuck_jobs', 'gauge',
        'Jobs in progress past their timeout or lease, held by a worker that is gone, or running over 5 times their p99 (asyncjobs.stuck_jobs).',
        format('asyncjobs_stuck_jobs{%s} %s', db, (SELECT count(*) FROM asyncjobs.stuck_jobs)));

    -- the worker pool of this database
    SELECT string_agg(format('asyncjobs_workers{%s,state="%s"} %s', db, s.state,
                             (SELECT count(*) FROM asyncjobs.workers w
                               WHERE w.database = current_database() AND w.state = s.state)),
                      E'\n' ORDER BY s.ord)
      INTO lines
      FROM (VALUES (1, 'idle'), (2, 'claiming'), (3, 'running')) s(ord, state);
    out := out || asyncjobs._prom_family('asyncjobs_workers', 'gauge',
        'Background workers of this database that are up, by state.', lines);
    out := out || asyncjobs._prom_family('asyncjobs_workers_configured', 'gauge',
        'Workers each database should have (asyncjobs.max_workers).',
        format('asyncjobs_workers_configured{%s} %s', db, current_setting('asyncjobs.max_workers')::int));

    -- health checks
    SELECT string_agg(format('asyncjobs_health_status{%s,check="%s"} %s', db,
                             asyncjobs._prom_label(h.check_name),
                             CASE h.status WHEN 'OK' THEN 0 WHEN 'WARN' THEN 1 ELSE 2 END),
                      E'\n' ORDER BY h.check_name COLLATE "C")
      INTO lines
      FROM asyncjobs.health() h;
    out := out || asyncjobs._prom_family('asyncjobs_health_status', 'gauge',
        'The checks of asyncjobs.health(): 0 OK, 1 WARN, 2 CRIT.', lines);
    RETURN out;
END
$$;

COMMENT ON FUNCTION asyncjobs.metrics() IS
'the monitoring figures in Prometheus text exposition format (for node_exporter''s textfile collector or any scraper)';
