/*-------------------------------------------------------------------------
 *
 * monitor.c
 *	  Duration histograms for the hourly rollups, and the thresholds of
 *	  asyncjobs.health().
 *
 * The rollups (asyncjobs.job_rollup) keep, per minute or hour, operation
 * and owner, the run times of the jobs that completed as a histogram: an
 * int4[] whose element b counts the durations that fell in bucket b.  The
 * buckets grow geometrically by 10 % from 10 microseconds:
 *
 *		bucket 0:	d < 10 us
 *		bucket b:	10 us * 1.1^(b-1) <= d < 10 us * 1.1^b		(1 <= b < 255)
 *		bucket 255: everything longer (about 4 days and more)
 *
 * so two histograms merge by adding them element by element, whatever the
 * rows or periods they cover, and a percentile read off one is within 5 %
 * of the true value (it is reported as the geometric middle of its
 * bucket).  Arrays are stored without their trailing empty buckets.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/guc.h"

#include "asyncjobs.h"

#define HIST_BUCKETS	256
#define HIST_BASE		1e-5	/* seconds: the upper bound of bucket 0 */
#define HIST_GROWTH		1.1

PG_FUNCTION_INFO_V1(asyncjobs_hist_add);
PG_FUNCTION_INFO_V1(asyncjobs_hist_merge);
PG_FUNCTION_INFO_V1(asyncjobs_hist_quantile);
PG_FUNCTION_INFO_V1(asyncjobs_hist_count);

/* health() thresholds: see asyncjobs_monitor_init */
static double		asyncjobs_health_failure_rate_warn = 0.05;
static double		asyncjobs_health_failure_rate_crit = 0.25;
static int			asyncjobs_health_backlog_warn = 10000;
static int			asyncjobs_health_backlog_crit = 100000;
static int			asyncjobs_health_oldest_ready_warn = 300;
static int			asyncjobs_health_oldest_ready_crit = 1800;
static int			asyncjobs_health_stuck_warn = 1;
static int			asyncjobs_health_stuck_crit = 10;
static int			asyncjobs_health_retry_storm_attempts = 10;
static int			asyncjobs_health_dead_tuples_warn = 100000;
static int			asyncjobs_health_dead_tuples_crit = 1000000;
static int			asyncjobs_health_cleanup_max_age = 2 * 86400;

/*
 * The bucket of a duration in seconds.
 */
static int
hist_bucket(double seconds)
{
	double		b;

	if (isnan(seconds) || seconds < HIST_BASE)
		return 0;
	b = floor(log(seconds / HIST_BASE) / log(HIST_GROWTH)) + 1;
	if (b >= HIST_BUCKETS - 1)
		return HIST_BUCKETS - 1;
	return (int) b;
}

/*
 * The value a bucket stands for: the geometric middle of its bounds.
 */
static double
hist_value(int b)
{
	if (b <= 0)
		return HIST_BASE / 2;
	return HIST_BASE * pow(HIST_GROWTH, (double) b - 0.5);
}

/*
 * The counts of a histogram array, copied into counts[HIST_BUCKETS];
 * returns the number of buckets the array had.
 */
static int
hist_read(ArrayType *a, int64 *counts)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (ARR_NDIM(a) > 1 || ARR_ELEMTYPE(a) != INT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a duration histogram is a one-dimensional int4 array")));
	deconstruct_array(a, INT4OID, sizeof(int32), true, TYPALIGN_INT,
					  &elems, &nulls, &n);
	if (n > HIST_BUCKETS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a duration histogram has at most %d buckets, not %d",
						HIST_BUCKETS, n)));
	for (i = 0; i < n; i++)
		counts[i] += nulls[i] ? 0 : DatumGetInt32(elems[i]);
	return n;
}

static ArrayType *
hist_build(int64 *counts)
{
	Datum		elems[HIST_BUCKETS];
	int			n = HIST_BUCKETS;
	int			i;

	while (n > 0 && counts[n - 1] == 0)
		n--;
	for (i = 0; i < n; i++)
	{
		if (counts[i] > PG_INT32_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("duration histogram bucket %d overflows", i)));
		elems[i] = Int32GetDatum((int32) counts[i]);
	}
	return construct_array(elems, n, INT4OID, sizeof(int32), true, TYPALIGN_INT);
}

/*
 * asyncjobs._hist_add(hist int4[], seconds float8, n int4) -> int4[]
 *
 * Adds n durations of this many seconds.  A NULL histogram is an empty
 * one; a NULL duration adds nothing.
 */
Datum
asyncjobs_hist_add(PG_FUNCTION_ARGS)
{
	int64		counts[HIST_BUCKETS] = {0};
	int32		n = PG_ARGISNULL(2) ? 1 : PG_GETARG_INT32(2);

	if (!PG_ARGISNULL(0))
		hist_read(PG_GETARG_ARRAYTYPE_P(0), counts);
	if (!PG_ARGISNULL(1))
		counts[hist_bucket(PG_GETARG_FLOAT8(1))] += n;
	PG_RETURN_ARRAYTYPE_P(hist_build(counts));
}

/*
 * asyncjobs._hist_merge(a int4[], b int4[]) -> int4[]: the sum of both
 * (the transition and combine function of the aggregate hist_merge).
 */
Datum
asyncjobs_hist_merge(PG_FUNCTION_ARGS)
{
	int64		counts[HIST_BUCKETS] = {0};

	if (PG_ARGISNULL(0) && PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (!PG_ARGISNULL(0))
		hist_read(PG_GETARG_ARRAYTYPE_P(0), counts);
	if (!PG_ARGISNULL(1))
		hist_read(PG_GETARG_ARRAYTYPE_P(1), counts);
	PG_RETURN_ARRAYTYPE_P(hist_build(counts));
}

/*
 * asyncjobs._hist_quantile(hist int4[], q float8) -> float8 seconds
 *
 * The q-quantile (0 <= q <= 1) of the durations: the value of the first
 * bucket where the running count reaches q of the total.  NULL for an
 * empty histogram.
 */
Datum
asyncjobs_hist_quantile(PG_FUNCTION_ARGS)
{
	int64		counts[HIST_BUCKETS] = {0};
	double		q = PG_GETARG_FLOAT8(1);
	int			n;
	int			i;
	int64		total = 0;
	int64		seen = 0;
	double		rank;

	if (isnan(q) || q < 0 || q > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantile must be between 0 and 1")));
	n = hist_read(PG_GETARG_ARRAYTYPE_P(0), counts);
	for (i = 0; i < n; i++)
		total += counts[i];
	if (total == 0)
		PG_RETURN_NULL();

	rank = Max(1.0, ceil(q * (double) total));
	for (i = 0; i < n; i++)
	{
		seen += counts[i];
		if ((double) seen >= rank)
			break;
	}
	PG_RETURN_FLOAT8(hist_value(Min(i, n - 1)));
}

/*
 * asyncjobs._hist_count(hist int4[]) -> bigint: durations counted.
 */
Datum
asyncjobs_hist_count(PG_FUNCTION_ARGS)
{
	int64		counts[HIST_BUCKETS] = {0};
	int			n = hist_read(PG_GETARG_ARRAYTYPE_P(0), counts);
	int64		total = 0;
	int			i;

	for (i = 0; i < n; i++)
		total += counts[i];
	PG_RETURN_INT64(total);
}

/*
 * The thresholds of asyncjobs.health(): ordinary settings, so that a
 * database, a role or a session may have its own.
 */
void
asyncjobs_monitor_init(void)
{
	DefineCustomRealVariable("asyncjobs.health_failure_rate_warn",
							 "Failure rate of the last 24 hours at which health() warns.",
							 "Failed jobs over completed (succeeded or failed) jobs, 0 to 1.",
							 &asyncjobs_health_failure_rate_warn,
							 0.05, 0.0, 1.0, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("asyncjobs.health_failure_rate_crit",
							 "Failure rate of the last 24 hours at which health() is critical.",
							 NULL,
							 &asyncjobs_health_failure_rate_crit,
							 0.25, 0.0, 1.0, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_backlog_warn",
							"Jobs ready to run at which health() warns.",
							NULL,
							&asyncjobs_health_backlog_warn,
							10000, 1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_backlog_crit",
							"Jobs ready to run at which health() is critical.",
							NULL,
							&asyncjobs_health_backlog_crit,
							100000, 1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_oldest_ready_warn",
							"Age of the oldest ready job at which health() warns.",
							NULL,
							&asyncjobs_health_oldest_ready_warn,
							300, 1, INT_MAX, PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_oldest_ready_crit",
							"Age of the oldest ready job at which health() is critical.",
							NULL,
							&asyncjobs_health_oldest_ready_crit,
							1800, 1, INT_MAX, PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_stuck_warn",
							"Stuck jobs at which health() warns.",
							NULL,
							&asyncjobs_health_stuck_warn,
							1, 1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_stuck_crit",
							"Stuck jobs at which health() is critical.",
							NULL,
							&asyncjobs_health_stuck_crit,
							10, 1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_retry_storm_attempts",
							"Attempts within an hour, none successful, that make an operation a retry storm.",
							"health() is critical when an operation had at least this many "
							"attempts (retries and failures) in the last hour and no success.",
							&asyncjobs_health_retry_storm_attempts,
							10, 1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_dead_tuples_warn",
							"Dead rows in the active job table at which health() warns.",
							NULL,
							&asyncjobs_health_dead_tuples_warn,
							100000, 1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_dead_tuples_crit",
							"Dead rows in the active job table at which health() is critical.",
							NULL,
							&asyncjobs_health_dead_tuples_crit,
							1000000, 1, INT_MAX, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("asyncjobs.health_cleanup_max_age",
							"Longest time since cleanup() last ran before health() warns.",
							NULL,
							&asyncjobs_health_cleanup_max_age,
							2 * 86400, 60, INT_MAX, PGC_USERSET, GUC_UNIT_S, NULL, NULL, NULL);
}
