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
 * The rollups are written in the transaction that completes the job.  In
 * a worker's batch (worker.c) the events are added up in memory instead,
 * each tagged with the subtransaction that made it, so that a job whose
 * subtransaction rolls back counts nothing, and written once per
 * operation and owner just before the batch commits: one row update per
 * batch rather than one per job (updating the same row from many
 * subtransactions of one transaction also makes every later update walk
 * the row's versions and their multixacts).
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "asyncjobs.h"

#define HIST_BUCKETS	256
#define HIST_BASE		1e-5	/* seconds: the upper bound of bucket 0 */
#define HIST_GROWTH		1.1

PG_FUNCTION_INFO_V1(asyncjobs_hist_add);
PG_FUNCTION_INFO_V1(asyncjobs_hist_merge);
PG_FUNCTION_INFO_V1(asyncjobs_hist_quantile);
PG_FUNCTION_INFO_V1(asyncjobs_hist_count);
PG_FUNCTION_INFO_V1(asyncjobs_rollup_add);
PG_FUNCTION_INFO_V1(asyncjobs_hist_accum);
PG_FUNCTION_INFO_V1(asyncjobs_hist_final);

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
 * The aggregate asyncjobs.hist_merge(int4[]): the running sum is kept in
 * memory (an int64 per bucket) and made into an array once, at the end.
 */
Datum
asyncjobs_hist_accum(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	int64	   *state;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "asyncjobs._hist_accum called in non-aggregate context");
	state = PG_ARGISNULL(0) ? NULL : (int64 *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1))
	{
		if (state == NULL)
			PG_RETURN_NULL();
		PG_RETURN_POINTER(state);
	}
	if (state == NULL)
		state = MemoryContextAllocZero(aggcxt, sizeof(int64) * HIST_BUCKETS);
	hist_read(PG_GETARG_ARRAYTYPE_P(1), state);
	PG_RETURN_POINTER(state);
}

Datum
asyncjobs_hist_final(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_ARRAYTYPE_P(hist_build((int64 *) PG_GETARG_POINTER(0)));
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

/* ---- rollup events ---- */

typedef struct RollupEvent
{
	char		op[NAMEDATALEN];
	Oid			owner;
	int16		status;			/* 30, 31, 32, or 0 for a retry */
	bool		has_timespan;
	bool		loop;
	double		timespan;
	int32		retried;
	SubTransactionId subid;
} RollupEvent;

static bool rollup_buffering = false;
static bool rollup_callbacks = false;
static RollupEvent *rollup_events = NULL;
static int	rollup_n = 0;
static int	rollup_max = 0;

/*
 * Writes one (operation, owner) sum through asyncjobs._rollup_write.
 */
static void
rollup_write(const char *op, Oid owner, int64 succeeded, int64 failed,
			 int64 canceled, int64 retries, int64 loops, double dsum,
			 int64 *hist, bool any_duration)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[9];
	char		nulls[9];

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		Oid			types[9] = {TEXTOID, OIDOID, INT8OID, INT8OID, INT8OID,
		INT8OID, INT8OID, FLOAT8OID, INT4ARRAYOID};

		plan = SPI_prepare("SELECT asyncjobs._rollup_write($1, $2::pg_catalog.regrole, "
						   "$3, $4, $5, $6, $7, $8, $9)", 9, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	memset(nulls, ' ', sizeof(nulls));
	args[0] = CStringGetTextDatum(op);
	args[1] = ObjectIdGetDatum(owner);
	args[2] = Int64GetDatum(succeeded);
	args[3] = Int64GetDatum(failed);
	args[4] = Int64GetDatum(canceled);
	args[5] = Int64GetDatum(retries);
	args[6] = Int64GetDatum(loops);
	args[7] = Float8GetDatum(dsum);
	if (any_duration)
		args[8] = PointerGetDatum(hist_build(hist));
	else
	{
		args[8] = (Datum) 0;
		nulls[8] = 'n';
	}
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "asyncjobs._rollup_write failed");
	SPI_finish();
}

static void
rollup_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			i,
				kept;

	if (rollup_n == 0)
		return;
	switch (event)
	{
		case SUBXACT_EVENT_COMMIT_SUB:
			/* the parent takes over what the subtransaction counted */
			for (i = 0; i < rollup_n; i++)
				if (rollup_events[i].subid == mySubid)
					rollup_events[i].subid = parentSubid;
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			/* what a rolled-back subtransaction counted never happened */
			for (i = 0, kept = 0; i < rollup_n; i++)
				if (rollup_events[i].subid != mySubid)
					rollup_events[kept++] = rollup_events[i];
			rollup_n = kept;
			break;
		default:
			break;
	}
}

static void
rollup_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		rollup_n = 0;
	else if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) &&
			 rollup_n > 0)
	{
		elog(WARNING, "asyncjobs: %d monitoring events were not written before commit",
			 rollup_n);
		rollup_n = 0;
	}
}

/*
 * From now on (in this process), rollup events are added up in memory
 * until asyncjobs_rollup_flush().
 */
void
asyncjobs_rollup_buffer(bool on)
{
	if (on && !rollup_callbacks)
	{
		RegisterSubXactCallback(rollup_subxact_callback, NULL);
		RegisterXactCallback(rollup_xact_callback, NULL);
		rollup_callbacks = true;
	}
	rollup_buffering = on;
}

/*
 * Writes the events added up so far, one row update per operation and
 * owner.  Called in the transaction that made them, before its commit.
 */
void
asyncjobs_rollup_flush(void)
{
	int			i,
				j;
	bool	   *done;

	if (rollup_n == 0)
		return;
	PushActiveSnapshot(GetTransactionSnapshot());
	done = palloc0(sizeof(bool) * rollup_n);
	for (i = 0; i < rollup_n; i++)
	{
		int64		counts[4] = {0};	/* succeeded, failed, canceled, loops */
		int64		retries = 0;
		int64		hist[HIST_BUCKETS] = {0};
		double		dsum = 0;
		bool		any_duration = false;

		if (done[i])
			continue;
		for (j = i; j < rollup_n; j++)
		{
			RollupEvent *e = &rollup_events[j];

			if (done[j] || e->owner != rollup_events[i].owner ||
				strcmp(e->op, rollup_events[i].op) != 0)
				continue;
			done[j] = true;
			if (e->status >= 30 && e->status <= 32)
				counts[e->status - 30]++;
			if (e->loop)
				counts[3]++;
			retries += e->retried;
			if ((e->status == 30 || e->status == 31) && e->has_timespan)
			{
				hist[hist_bucket(e->timespan)]++;
				dsum += e->timespan;
				any_duration = true;
			}
		}
		rollup_write(rollup_events[i].op, rollup_events[i].owner, counts[0],
					 counts[1], counts[2], retries, counts[3], dsum, hist,
					 any_duration);
	}
	pfree(done);
	rollup_n = 0;
	PopActiveSnapshot();
}

/*
 * asyncjobs._rollup_add(op, owner, status, timespan, retried, loop)
 */
Datum
asyncjobs_rollup_add(PG_FUNCTION_ARGS)
{
	char	   *op;
	Oid			owner;
	int16		status = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT16(2);
	bool		has_timespan = !PG_ARGISNULL(3);
	double		timespan = has_timespan ? PG_GETARG_FLOAT8(3) : 0;
	int32		retried = PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4);
	bool		loop = PG_ARGISNULL(5) ? false : PG_GETARG_BOOL(5);

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("operation and owner must not be NULL")));
	op = text_to_cstring(PG_GETARG_TEXT_PP(0));
	owner = PG_GETARG_OID(1);
	asyncjobs_rollup_event(op, owner, status, has_timespan, timespan, retried, loop);
	PG_RETURN_VOID();
}

/*
 * Counts one event: added up in memory in a worker's batch, written at
 * once elsewhere.
 */
void
asyncjobs_rollup_event(const char *op, Oid owner, int16 status,
					   bool has_timespan, double timespan, int32 retried,
					   bool loop)
{
	if (rollup_buffering && strlen(op) < NAMEDATALEN)
	{
		RollupEvent *e;

		if (rollup_n == rollup_max)
		{
			int			newmax = Max(64, rollup_max * 2);

			rollup_events = rollup_events == NULL ?
				MemoryContextAlloc(TopMemoryContext, sizeof(RollupEvent) * newmax) :
				repalloc(rollup_events, sizeof(RollupEvent) * newmax);
			rollup_max = newmax;
		}
		e = &rollup_events[rollup_n++];
		strlcpy(e->op, op, NAMEDATALEN);
		e->owner = owner;
		e->status = status;
		e->has_timespan = has_timespan;
		e->timespan = timespan;
		e->retried = retried;
		e->loop = loop;
		e->subid = GetCurrentSubTransactionId();
	}
	else
	{
		int64		hist[HIST_BUCKETS] = {0};
		bool		any_duration = (status == 30 || status == 31) && has_timespan;

		if (any_duration)
			hist[hist_bucket(timespan)]++;
		rollup_write(op, owner, status == 30, status == 31, status == 32,
					 retried, loop, any_duration ? timespan : 0, hist,
					 any_duration);
	}
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
