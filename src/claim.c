/*-------------------------------------------------------------------------
 *
 * claim.c
 *	  The claim's choice of jobs: one statement, prepared once per process.
 *
 * Which jobs a claim takes (DESIGN section 3): for each operation type that
 * can be claimed, its ready jobs in job_claim_idx order (priority, runafter,
 * id) after the caller's watermark for it, none whose dependency token an
 * older job still holds, at most the type's room (max_concurrency less the
 * jobs it has InProgress), locked FOR UPDATE SKIP LOCKED; then the
 * operations interleaved (the first job of each, then the second ...)
 * within a priority, the first n of them.
 *
 * A background worker runs this statement directly, in the claim's
 * transaction, to lock the jobs of a fused batch (worker.c, claim_jobs);
 * asyncjobs._claim() runs it too, through asyncjobs._claim_locked(), for
 * every other claim (marked InProgress, external workers, capped
 * operations): the choice of jobs exists once.
 *
 * The statement is kept small, and the interleaving is done here: on an
 * idle server, where a claim's code and data have left the CPU's caches,
 * a claim of one job cost about 0.45 ms more as one statement that also
 * ranked and sorted (a window function, two sorts, a CTE) than as a plain
 * ordered scan, and that was most of the wake-up latency (enqueue commit
 * to job start).  The statement returns each claimable operation type
 * once at least (a left join), with its jobs if any, so that a fused
 * claim learns without a second statement whether a capped operation can
 * be claimed.
 *
 * A fused claim (the jobs stay as they are and run in the claim's
 * transaction) is not for operations with max_concurrency, whose caps count
 * the jobs marked InProgress: asked for a fused claim while such an
 * operation can be claimed, asyncjobs_claim_scan says so and takes
 * nothing, and the caller claims the usual way (asyncjobs._claim takes the
 * caps' advisory locks).
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "asyncjobs.h"

/*
 * $1 n, $2 operations (NULL: all), $3 external, $4 after_ops,
 * $5 after_priority, $6 after_runafter, $7 after_id (the watermarks: NULLs
 * for none), $8 fused.  One row per claimable operation type and job
 * (types without jobs once, with NULLs), each type's jobs in claim key
 * order, at most n of them (its room: none for a capped type in a fused
 * claim, which is not to take its jobs).
 */
static const char *const claim_scan_sql =
"SELECT t.name, t.handler::oid,"
"       (extract(epoch FROM t.timeout) * 1000)::bigint,"
"       (extract(epoch FROM t.retry_delay) * 1000)::bigint,"
"       (extract(epoch FROM t.retry_delay_max) * 1000)::bigint,"
"       t.max_concurrency IS NOT NULL,"
"       j.asyncoperationid, j.operationtype, j.ownerid::oid, j.data,"
"       j.retrycount, j.maxretries, j.priority, j.runafter, j.ctid,"
"       j.dependencytoken IS NOT NULL"
"  FROM asyncjobs.operation_type t"
"  LEFT JOIN LATERAL ("
"      SELECT j.asyncoperationid, j.operationtype, j.ownerid, j.data,"
"             j.retrycount, j.maxretries, j.priority, j.runafter, j.ctid,"
"             j.dependencytoken"
"        FROM asyncjobs.job j"
"       WHERE j.messagename = t.name"
"         AND j.statuscode IN (0, 10, 11)"
"         AND (j.priority, j.runafter, j.asyncoperationid) >"
"             (coalesce($5[array_position($4, t.name)], '-2147483648'::int),"
"              coalesce($6[array_position($4, t.name)], '-infinity'::timestamptz),"
"              coalesce($7[array_position($4, t.name)], '-9223372036854775808'::bigint))"
"         AND j.runafter <= now()"
"         AND (j.dependencytoken IS NULL OR NOT EXISTS ("
"                  SELECT 1 FROM asyncjobs.job d"
"                   WHERE d.dependencytoken = j.dependencytoken"
"                     AND d.asyncoperationid < j.asyncoperationid))"
"       ORDER BY j.priority, j.runafter, j.asyncoperationid"
"       LIMIT CASE WHEN t.max_concurrency IS NULL THEN $1"
"                  WHEN $8 THEN 0"
"                  ELSE greatest(0, least($1, t.max_concurrency -"
"                           (SELECT count(*)::int FROM asyncjobs.job r"
"                             WHERE r.messagename = t.name AND r.statecode = 2)))"
"             END"
"         FOR UPDATE OF j SKIP LOCKED) j ON true"
" WHERE NOT t.paused"
"   AND (t.handler IS NOT NULL OR t.builtin) <> $3"
"   AND ($2 IS NULL OR t.name = ANY ($2))";

#define SCAN_COLUMNS 16

static SPIPlanPtr claim_scan_plan = NULL;

/* a job the statement locked, with its rank in its operation and priority */
typedef struct ScanEntry
{
	int			row;			/* in SPI_tuptable */
	int			rank;			/* 1 for its operation's first job of its
								 * priority, ... */
	int32		priority;
	TimestampTz runafter;
	int64		id;
} ScanEntry;

/*
 * Claim order: priority, then rank (round robin across operations: the
 * first job of each before the second of any), runafter, id
 */
static int
scan_entry_cmp(const void *a, const void *b)
{
	const ScanEntry *x = (const ScanEntry *) a;
	const ScanEntry *y = (const ScanEntry *) b;

	if (x->priority != y->priority)
		return x->priority < y->priority ? -1 : 1;
	if (x->rank != y->rank)
		return x->rank < y->rank ? -1 : 1;
	if (x->runafter != y->runafter)
		return x->runafter < y->runafter ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/*
 * Runs the claim's statement in the caller's SPI connection, with the
 * caller's snapshot (args and nulls as claim_scan_sql numbers them), and
 * returns the jobs to take, in claim order, as *jobs allocated in cxt (at
 * least one element).  The jobs are locked, not marked.  *capped: a fused
 * claim met an operation with max_concurrency; then it returns no jobs
 * (some may be locked all the same), and the caller claims the usual way.
 */
int
asyncjobs_claim_scan(Datum *args, const char *nulls, MemoryContext cxt,
					 AsyncJob **jobs, bool *capped)
{
	int			limit = DatumGetInt32(args[0]);
	bool		fused = DatumGetBool(args[7]);
	ScanEntry  *entries;
	Datum	   *values;
	bool	   *isnull;
	TupleDesc	tupdesc;
	MemoryContext oldcxt;
	text	   *prev_op = NULL;
	int32		prev_priority = 0;
	int			rank = 0;
	int			nestlevel;
	int			nrows;
	int			n = 0;
	int			rc;
	int			i;

	if (claim_scan_plan == NULL)
	{
		Oid			types[AJ_CLAIM_SCAN_ARGS] = {INT4OID, TEXTARRAYOID, BOOLOID,
			TEXTARRAYOID, INT4ARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID, BOOLOID};
		SPIPlanPtr	plan;

		/*
		 * Its plan does not depend on the arguments' values (job_claim_idx
		 * in order, the jobs by id): a custom plan per call, which the plan
		 * cache kept choosing, was most of a small claim's time.
		 */
		plan = SPI_prepare_cursor(claim_scan_sql, AJ_CLAIM_SCAN_ARGS, types,
								  CURSOR_OPT_GENERIC_PLAN);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for the claim statement: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		claim_scan_plan = plan;
	}

	/*
	 * Without JIT: a worker plans with enable_seqscan off, so the scan of
	 * operation_type costs the planner's "disabled" penalty, far above
	 * jit_above_cost, and every claim compiled its expressions (half a
	 * second).  The plan is made at the first execution, and again after
	 * an invalidation: the setting has to be there at each.
	 */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	*capped = false;
	rc = SPI_execute_plan(claim_scan_plan, args, nulls, false, 0);
	AtEOXact_GUC(true, nestlevel);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "asyncjobs claim statement failed: %s",
			 SPI_result_code_string(rc));
	nrows = (int) SPI_processed;
	tupdesc = SPI_tuptable->tupdesc;
	if (nrows > 0 && tupdesc->natts != SCAN_COLUMNS)
		elog(ERROR, "asyncjobs claim statement returned %d columns, not %d",
			 tupdesc->natts, SCAN_COLUMNS);

	/*
	 * Every row deformed once (reading column by column would walk each
	 * row from its start, past the operation's name, for every column).
	 * The jobs: an operation's rows come together, in claim key order.
	 */
	values = palloc(sizeof(Datum) * SCAN_COLUMNS * Max(nrows, 1));
	isnull = palloc(sizeof(bool) * SCAN_COLUMNS * Max(nrows, 1));
	entries = palloc(sizeof(ScanEntry) * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
	{
		Datum	   *v = &values[i * SCAN_COLUMNS];
		bool	   *null = &isnull[i * SCAN_COLUMNS];
		text	   *op;

		heap_deform_tuple(SPI_tuptable->vals[i], tupdesc, v, null);
		if (fused && DatumGetBool(v[5]))
			*capped = true;
		if (null[6])
			continue;			/* an operation without jobs to take */
		entries[n].row = i;
		entries[n].id = DatumGetInt64(v[6]);
		entries[n].priority = DatumGetInt32(v[12]);
		entries[n].runafter = DatumGetTimestampTz(v[13]);

		/*
		 * Ranked within its operation (the first column) and priority: an
		 * operation's job of a higher priority does not put its others
		 * behind those of the other operations.
		 */
		op = DatumGetTextPP(v[0]);
		if (prev_op == NULL ||
			VARSIZE_ANY_EXHDR(op) != VARSIZE_ANY_EXHDR(prev_op) ||
			memcmp(VARDATA_ANY(op), VARDATA_ANY(prev_op), VARSIZE_ANY_EXHDR(op)) != 0 ||
			entries[n].priority != prev_priority)
		{
			prev_op = op;
			prev_priority = entries[n].priority;
			rank = 0;
		}
		entries[n].rank = ++rank;
		n++;
	}
	if (*capped)
		n = 0;
	qsort(entries, n, sizeof(ScanEntry), scan_entry_cmp);
	n = Min(n, limit);

	oldcxt = MemoryContextSwitchTo(cxt);
	*jobs = palloc0(sizeof(AsyncJob) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		AsyncJob   *job = &(*jobs)[i];
		Datum	   *v = &values[entries[i].row * SCAN_COLUMNS];
		bool	   *null = &isnull[entries[i].row * SCAN_COLUMNS];

		job->operation = TextDatumGetCString(v[0]);
		job->handler = null[1] ? InvalidOid : DatumGetObjectId(v[1]);
		job->timeout_ms = null[2] ? 0 : DatumGetInt64(v[2]);
		job->retry_delay_ms = null[3] ? 10000 : DatumGetInt64(v[3]);
		job->retry_delay_max_ms = null[4] ? 3600 * 1000 : DatumGetInt64(v[4]);
		job->id = DatumGetInt64(v[6]);
		job->operationtype = null[7] ? 0 : DatumGetInt32(v[7]);
		job->owner = null[8] ? InvalidOid : DatumGetObjectId(v[8]);
		/* data is NOT NULL; kept as jsonb, not a text to parse again */
		job->data = null[9] ? NULL : DatumGetJsonbPCopy(v[9]);
		job->retrycount = null[10] ? 0 : DatumGetInt32(v[10]);
		job->maxretries = null[11] ? 0 : DatumGetInt32(v[11]);
		job->priority = DatumGetInt32(v[12]);
		job->runafter = DatumGetTimestampTz(v[13]);
		ItemPointerCopy((ItemPointer) DatumGetPointer(v[14]), &job->tid);
		job->fused = fused;
		job->dependent = DatumGetBool(v[15]);
	}
	MemoryContextSwitchTo(oldcxt);
	pfree(entries);
	pfree(values);
	pfree(isnull);
	return n;
}

/*
 * asyncjobs._claim_locked(n, operations, external, after_ops,
 * after_priority, after_runafter, after_id, fused): the jobs a claim would
 * take, locked, in claim order, with asyncjobs._claim's columns (fused as
 * asked, no lease); none for a fused claim that meets a capped operation.
 * For asyncjobs._claim, which marks them or not.
 */
PG_FUNCTION_INFO_V1(asyncjobs_claim_locked);
Datum
asyncjobs_claim_locked(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		args[AJ_CLAIM_SCAN_ARGS];
	char		nulls[AJ_CLAIM_SCAN_ARGS];
	MemoryContext cxt = CurrentMemoryContext;
	AsyncJob   *jobs;
	bool		capped;
	int			n;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2) || PG_ARGISNULL(7))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("n, external and fused must not be null")));
	if (PG_GETARG_INT32(0) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("n must not be negative")));
	for (i = 0; i < AJ_CLAIM_SCAN_ARGS; i++)
	{
		args[i] = PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}

	InitMaterializedSRF(fcinfo, 0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	n = asyncjobs_claim_scan(args, nulls, cxt, &jobs, &capped);
	SPI_finish();

	for (i = 0; i < n; i++)
	{
		AsyncJob   *job = &jobs[i];
		Datum		v[AJ_CLAIM_COLUMNS];
		bool		null[AJ_CLAIM_COLUMNS];

		memset(null, false, sizeof(null));
		v[0] = Int64GetDatum(job->id);
		v[1] = CStringGetTextDatum(job->operation);
		v[2] = Int32GetDatum(job->operationtype);
		v[3] = ObjectIdGetDatum(job->owner);
		v[4] = PointerGetDatum(job->data);
		null[4] = job->data == NULL;
		v[5] = Int32GetDatum(job->retrycount);
		v[6] = Int32GetDatum(job->maxretries);
		v[7] = ObjectIdGetDatum(job->handler);
		null[7] = !OidIsValid(job->handler);
		v[8] = Int64GetDatum(job->timeout_ms);
		v[9] = Int64GetDatum(job->retry_delay_ms);
		v[10] = Int64GetDatum(job->retry_delay_max_ms);
		null[11] = null[12] = true; /* no lease */
		v[11] = v[12] = (Datum) 0;
		v[13] = Int32GetDatum(job->priority);
		v[14] = TimestampTzGetDatum(job->runafter);
		v[15] = PointerGetDatum(&job->tid);
		v[16] = BoolGetDatum(job->fused);
		v[17] = BoolGetDatum(job->dependent);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, null);
	}

	return (Datum) 0;
}
