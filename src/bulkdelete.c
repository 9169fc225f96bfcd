/*-------------------------------------------------------------------------
 *
 * bulkdelete.c
 *	  Runs bulk delete jobs (operationtype 13): the rows of a table that
 *	  match a condition are deleted in batches, one transaction per batch,
 *	  as the job's owner.
 *
 * Each batch's transaction also adds the batch to the job's progress
 * (asyncjobs.bulkdelete_progress), so after a crash the job resumes where
 * it stopped and its counts are exact.  When a batch fails as a whole (a
 * restricting foreign key, a trigger's error), it is done again row by row,
 * each row in a subtransaction: the rows that cannot be deleted get a row
 * in asyncjobs.bulkdeletefailure (and are not tried again by this job),
 * the others are deleted.  Between batches the job looks at its state: a
 * cancel or pause takes effect there (one during a batch interrupts it and
 * rolls the batch back), and outside its daily window the job goes back to
 * wait for the window's next start.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "asyncjobs.h"

/* What a bulk delete job asks for (its data) */
typedef struct BulkDelete
{
	Oid			target;
	char	   *condition;
	int			batch_size;
	char	   *window_start;	/* NULL: any time */
	char	   *window_end;
	char	   *relname;		/* quoted, qualified */
	char	   *keyexpr;		/* the row's key as text, alias t */
} BulkDelete;

/* One batch's result */
typedef struct BatchResult
{
	int64		deleted;
	int64		failed;
	List	   *fail_keys;		/* char * */
	List	   *fail_codes;		/* char * (SQLSTATE) */
	List	   *fail_messages;	/* char * */
} BatchResult;

PG_FUNCTION_INFO_V1(asyncjobs_check_condition);

/*----
 * asyncjobs._check_condition(condition text) -> void
 *
 * A bulk delete's condition must be one expression: it is parsed (never
 * run) as the WHERE clause of a plain SELECT.
 */
Datum
asyncjobs_check_condition(PG_FUNCTION_ARGS)
{
	char	   *cond = text_to_cstring(PG_GETARG_TEXT_PP(0));
	List	   *stmts;
	RawStmt    *raw;
	SelectStmt *sel;

	stmts = raw_parser(psprintf("SELECT 1 WHERE (%s\n)", cond), RAW_PARSE_DEFAULT);
	raw = list_length(stmts) == 1 ? linitial_node(RawStmt, stmts) : NULL;
	sel = (raw && IsA(raw->stmt, SelectStmt)) ? (SelectStmt *) raw->stmt : NULL;
	if (sel == NULL || sel->op != SETOP_NONE || sel->fromClause != NIL ||
		sel->whereClause == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("bulk delete condition must be a single boolean expression"),
				 errdetail("The condition is used as WHERE (condition) of each batch."),
				 errhint("Write only the expression, e.g. created < now() - interval '1 year'.")));
	PG_RETURN_VOID();
}

static char *
data_string(Jsonb *data, const char *key)
{
	JsonbValue	k;
	JsonbValue *v;

	if (data == NULL)
		return NULL;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	v = findJsonbValueFromContainer(&data->root, JB_FOBJECT, &k);
	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(v->val.numeric)));
	return NULL;
}

/*
 * Reads the job's data and looks up its table, into the current memory
 * context.  Errors here fail the job (inside the caller's subtransaction).
 */
static void
bulk_delete_setup(AsyncJob *job, BulkDelete *bd)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *data = job->data;
	char	   *s;
	Datum		arg;
	Oid			argtype = OIDOID;
	bool		isnull;
	char	   *nsp;

	s = data_string(data, "target_oid");
	bd->target = s ? (Oid) strtoul(s, NULL, 10) : InvalidOid;
	bd->condition = data_string(data, "condition");
	s = data_string(data, "batch_size");
	bd->batch_size = s ? atoi(s) : 5000;
	bd->window_start = data_string(data, "window_start");
	bd->window_end = data_string(data, "window_end");

	if (bd->condition == NULL || bd->batch_size < 1 || bd->batch_size > 100000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bulk delete job %lld has no valid condition or batch size",
						(long long) job->id),
				 errhint("Queue bulk deletes with asyncjobs.bulk_delete().")));
	nsp = OidIsValid(bd->target) ? get_namespace_name(get_rel_namespace(bd->target)) : NULL;
	if (nsp == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the table of bulk delete job %lld no longer exists",
						(long long) job->id)));
	bd->relname = quote_qualified_identifier(nsp, get_rel_name(bd->target));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	arg = ObjectIdGetDatum(bd->target);
	if (SPI_execute_with_args("SELECT asyncjobs._key_expression($1::pg_catalog.regclass)",
							  1, &argtype, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the primary key of %s", bd->relname);
	s = SPI_processed > 0 ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
	(void) isnull;
	if (s == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("table %s has no primary key", bd->relname)));
	bd->keyexpr = MemoryContextStrdup(cxt, s);
	SPI_finish();
	(void) DirectFunctionCall1(asyncjobs_check_condition,
							   CStringGetTextDatum(bd->condition));
}

/*
 * The rows of this batch: matching the condition, and not already found
 * undeletable by this job.
 */
static char *
batch_rows_sql(BulkDelete *bd, const char *what)
{
	return psprintf("SELECT %s FROM %s t WHERE (%s\n) AND NOT EXISTS ("
					"SELECT 1 FROM asyncjobs.bulkdeletefailure f "
					"WHERE f.asyncoperationid = $1 AND f.regardingobjectid = %s) LIMIT $2",
					what, bd->relname, bd->condition, bd->keyexpr);
}

/*
 * Runs one batch as the owner, in a subtransaction.  Returns true with the
 * counts, or false with the error in *outcome when the batch failed other
 * than row by row.
 */
static bool
run_batch(AsyncJob *job, BulkDelete *bd, BatchResult *res, AsyncJobOutcome *outcome,
		  MemoryContext oldcxt)
{
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec;
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		args[2];
	volatile bool ok = true;

	memset(res, 0, sizeof(BatchResult));
	args[0] = Int64GetDatum(job->id);
	args[1] = Int32GetDatum(bd->batch_size);
	GetUserIdAndSecContext(&save_userid, &save_sec);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		char	   *sql;
		int			rc;
		int			save_nestlevel;

		SetUserIdAndSecContext(job->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
		/* the condition is the owner's: it sees the owner's search_path */
		save_nestlevel = asyncjobs_enter_job_settings();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");

		/* the whole batch at once */
		{
			MemoryContext bcxt = CurrentMemoryContext;
			ResourceOwner bowner = CurrentResourceOwner;
			bool		whole_ok = true;

			BeginInternalSubTransaction(NULL);
			MemoryContextSwitchTo(bcxt);
			PG_TRY();
			{
				sql = psprintf("DELETE FROM %s d WHERE (d.tableoid, d.ctid) IN (%s)",
							   bd->relname, batch_rows_sql(bd, "t.tableoid, t.ctid"));
				rc = SPI_execute_with_args(sql, 2, types, args, NULL, false, 0);
				if (rc != SPI_OK_DELETE)
					elog(ERROR, "bulk delete failed: %s", SPI_result_code_string(rc));
				res->deleted = (int64) SPI_processed;
				ReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(bcxt);
				CurrentResourceOwner = bowner;
			}
			PG_CATCH();
			{
				ErrorData  *edata;

				MemoryContextSwitchTo(bcxt);
				edata = CopyErrorData();
				FlushErrorState();
				RollbackAndReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(bcxt);
				CurrentResourceOwner = bowner;
				/* a cancel, pause or timeout is not a row's fault */
				if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
					ReThrowError(edata);
				whole_ok = false;
			}
			PG_END_TRY();

			if (!whole_ok)
			{
				volatile uint64 i;
				uint64		nkeys;
				char	  **keys;

				/* row by row: the batch's keys (an error here fails the job) */
				rc = SPI_execute_with_args(batch_rows_sql(bd, bd->keyexpr),
										   2, types, args, NULL, false, 0);
				if (rc != SPI_OK_SELECT)
					elog(ERROR, "bulk delete failed: %s", SPI_result_code_string(rc));
				nkeys = SPI_processed;
				keys = palloc(sizeof(char *) * Max(nkeys, 1));
				for (i = 0; i < nkeys; i++)
					keys[i] = MemoryContextStrdup(oldcxt,
												  SPI_getvalue(SPI_tuptable->vals[i],
															   SPI_tuptable->tupdesc, 1));
				sql = psprintf("DELETE FROM %s t WHERE %s = $1", bd->relname, bd->keyexpr);
				for (i = 0; i < nkeys; i++)
				{
					Oid			ktype = TEXTOID;
					Datum		karg = CStringGetTextDatum(keys[i]);

					CHECK_FOR_INTERRUPTS();
					BeginInternalSubTransaction(NULL);
					MemoryContextSwitchTo(bcxt);
					PG_TRY();
					{
						rc = SPI_execute_with_args(sql, 1, &ktype, &karg, NULL, false, 0);
						if (rc != SPI_OK_DELETE)
							elog(ERROR, "bulk delete failed: %s", SPI_result_code_string(rc));
						res->deleted += (int64) SPI_processed;
						ReleaseCurrentSubTransaction();
						MemoryContextSwitchTo(bcxt);
						CurrentResourceOwner = bowner;
					}
					PG_CATCH();
					{
						ErrorData  *rowerr;

						MemoryContextSwitchTo(bcxt);
						rowerr = CopyErrorData();
						FlushErrorState();
						RollbackAndReleaseCurrentSubTransaction();
						MemoryContextSwitchTo(bcxt);
						CurrentResourceOwner = bowner;
						if (rowerr->sqlerrcode == ERRCODE_QUERY_CANCELED)
							ReThrowError(rowerr);
						/* kept for record_batch(), past our SPI connection */
						MemoryContextSwitchTo(oldcxt);
						res->failed++;
						res->fail_keys = lappend(res->fail_keys, keys[i]);
						res->fail_codes = lappend(res->fail_codes,
												  pstrdup(unpack_sql_state(rowerr->sqlerrcode)));
						res->fail_messages = lappend(res->fail_messages,
													 asyncjobs_error_report(rowerr));
						MemoryContextSwitchTo(bcxt);
					}
					PG_END_TRY();
				}
			}
		}

		SPI_finish();
		AtEOXact_GUC(false, save_nestlevel);
		SetUserIdAndSecContext(save_userid, save_sec);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		SetUserIdAndSecContext(save_userid, save_sec);

		outcome->succeeded = false;
		outcome->sqlerrcode = edata->sqlerrcode;
		outcome->friendly = pstrdup(edata->message ? edata->message : "unknown error");
		outcome->detail = edata->detail ? pstrdup(edata->detail) : NULL;
		outcome->hint = edata->hint ? pstrdup(edata->hint) : NULL;
		outcome->context = edata->context ? pstrdup(edata->context) : NULL;
		outcome->message = asyncjobs_error_report(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * Records a batch: its undeletable rows and its counts (as the worker's own
 * user, in the batch's transaction).
 */
static void
record_batch(AsyncJob *job, BatchResult *res)
{
	ListCell   *k,
			   *c,
			   *m;
	Oid			ftypes[4] = {INT8OID, TEXTOID, TEXTOID, TEXTOID};
	Oid			ptypes[3] = {INT8OID, INT8OID, INT8OID};
	Datum		pargs[3];

	forthree(k, res->fail_keys, c, res->fail_codes, m, res->fail_messages)
	{
		Datum		fargs[4];

		fargs[0] = Int64GetDatum(job->id);
		fargs[1] = CStringGetTextDatum((char *) lfirst(k));
		fargs[2] = CStringGetTextDatum((char *) lfirst(c));
		fargs[3] = CStringGetTextDatum((char *) lfirst(m));
		if (SPI_execute_with_args("INSERT INTO asyncjobs.bulkdeletefailure "
								  "(asyncoperationid, regardingobjectid, errornumber, errordescription) "
								  "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
								  4, ftypes, fargs, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record a bulk delete failure");
	}
	pargs[0] = Int64GetDatum(job->id);
	pargs[1] = Int64GetDatum(res->deleted);
	pargs[2] = Int64GetDatum(res->failed);
	if (SPI_execute_with_args("SELECT asyncjobs._bulk_delete_progress($1, $2, $3)",
							  3, ptypes, pargs, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record the progress of bulk delete job %lld",
			 (long long) job->id);
}

/*
 * The job's state now, and when its window opens next (0 if it is open).
 */
static int
job_state(AsyncJob *job, BulkDelete *bd, TimestampTz *wait_until)
{
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	bool		isnull;
	int			status;
	Datum		d;

	args[0] = Int64GetDatum(job->id);
	args[1] = bd->window_start ? CStringGetTextDatum(bd->window_start) : (Datum) 0;
	args[2] = bd->window_end ? CStringGetTextDatum(bd->window_end) : (Datum) 0;
	if (!bd->window_start)
		nulls[1] = nulls[2] = 'n';
	if (SPI_execute_with_args("SELECT j.statuscode, asyncjobs._window_wait($2::time, $3::time) "
							  "FROM asyncjobs.job j WHERE j.asyncoperationid = $1",
							  3, types, args, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the state of job %lld", (long long) job->id);
	if (SPI_processed == 0)
		return -1;
	status = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	*wait_until = isnull ? 0 : DatumGetTimestampTz(d);
	return status;
}

static void
start_batch_transaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
commit_batch_transaction(void)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
}

/*
 * Runs a bulk delete job to its end, or until it is canceled, paused, out
 * of its window, or fails.  Allocates in cxt.
 */
void
asyncjobs_run_bulk_delete(AsyncJob *job, MemoryContext cxt)
{
	BulkDelete	bd;
	AsyncJobOutcome outcome;
	TimestampTz started = GetCurrentTimestamp();
	volatile bool set_up = false;

	MemoryContext batchcxt = AllocSetContextCreate(cxt, "asyncjobs bulk delete batch",
												   ALLOCSET_DEFAULT_SIZES);

	memset(&bd, 0, sizeof(bd));
	memset(&outcome, 0, sizeof(outcome));
	asyncjobs_current_job_id = job->id;
	asyncjobs_trace_reset();

	for (;;)
	{
		BatchResult res;
		TimestampTz wait_until;
		int			status;
		bool		batch_ok;
		MemoryContext oldcxt;

		CHECK_FOR_INTERRUPTS();
		start_batch_transaction();
		oldcxt = MemoryContextSwitchTo(cxt);

		status = job_state(job, &bd, &wait_until);
		if (status != AJ_STATUS_IN_PROGRESS)
		{
			/* canceled or paused between batches (or gone) */
			MemoryContextSwitchTo(oldcxt);
			commit_batch_transaction();
			if (status >= 0)
				(void) asyncjobs_apply_control(job, NULL);
			break;
		}
		if (set_up && wait_until != 0)
		{
			/* out of the window: wait for its next start */
			Oid			types[2] = {INT8OID, TIMESTAMPTZOID};
			Datum		args[2] = {Int64GetDatum(job->id), TimestampTzGetDatum(wait_until)};

			(void) SPI_execute_with_args("SELECT asyncjobs._bulk_delete_wait($1, $2)",
										 2, types, args, NULL, false, 0);
			MemoryContextSwitchTo(oldcxt);
			commit_batch_transaction();
			ereport(LOG,
					(errmsg("asyncjobs bulk delete job %lld waits for its window",
							(long long) job->id)));
			break;
		}

		outcome.started = GetCurrentTimestamp();
		if (job->timeout_ms > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, (int) Min(job->timeout_ms, (int64) INT_MAX));
		MySlot->interruptible = true;

		if (!set_up)
		{
			/*
			 * The first transaction also reads the job (errors fail it), into
			 * cxt: after an SPI call the current context is SPI's own.
			 */
			MemoryContext setupcxt = cxt;

			BeginInternalSubTransaction(NULL);
			MemoryContextSwitchTo(setupcxt);
			PG_TRY();
			{
				bulk_delete_setup(job, &bd);
				ReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(setupcxt);
				set_up = true;
			}
			PG_CATCH();
			{
				ErrorData  *edata;

				MemoryContextSwitchTo(setupcxt);
				edata = CopyErrorData();
				FlushErrorState();
				RollbackAndReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(setupcxt);
				outcome.succeeded = false;
				outcome.sqlerrcode = edata->sqlerrcode;
				outcome.friendly = pstrdup(edata->message ? edata->message : "error");
				outcome.message = asyncjobs_error_report(edata);
			}
			PG_END_TRY();
			/* the window is known now: look again at the next round */
			if (set_up && bd.window_start)
			{
				HOLD_CANCEL_INTERRUPTS();
				MySlot->interruptible = false;
				disable_timeout(STATEMENT_TIMEOUT, false);
				MemoryContextSwitchTo(oldcxt);
				commit_batch_transaction();
				RESUME_CANCEL_INTERRUPTS();
				continue;
			}
		}

		MemoryContextReset(batchcxt);
		batch_ok = set_up && run_batch(job, &bd, &res, &outcome, batchcxt);

		HOLD_CANCEL_INTERRUPTS();
		MySlot->interruptible = false;
		disable_timeout(STATEMENT_TIMEOUT, false);
		QueryCancelPending = false;
		outcome.ended = GetCurrentTimestamp();

		if (!batch_ok)
		{
			/* the job failed (or was interrupted): retry or fail it */
			bool		recorded;

			recorded = asyncjobs_record_outcome(job, &outcome);
			MemoryContextSwitchTo(oldcxt);
			if (recorded)
				commit_batch_transaction();
			else
			{
				AbortCurrentTransaction();
				(void) asyncjobs_apply_control(job, NULL);
			}
			RESUME_CANCEL_INTERRUPTS();
			break;
		}

		record_batch(job, &res);
		if (res.deleted + res.failed == 0)
		{
			/* nothing left: the job Succeeded */
			outcome.succeeded = true;
			outcome.started = started;
			outcome.result = psprintf("{\"deleted\": " INT64_FORMAT ", \"failed\": " INT64_FORMAT "}",
									  (int64) 0, (int64) 0);
			{
				Oid			t1 = INT8OID;
				Datum		a1 = Int64GetDatum(job->id);

				if (SPI_execute_with_args("SELECT pg_catalog.jsonb_build_object("
										  "'deleted', successcount, 'failed', failurecount)::text "
										  "FROM asyncjobs.bulkdelete_progress WHERE asyncoperationid = $1",
										  1, &t1, &a1, NULL, false, 1) == SPI_OK_SELECT &&
					SPI_processed > 0)
					outcome.result = SPI_getvalue(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 1);
			}
			if (!asyncjobs_record_outcome(job, &outcome))
			{
				MemoryContextSwitchTo(oldcxt);
				AbortCurrentTransaction();
				(void) asyncjobs_apply_control(job, NULL);
				RESUME_CANCEL_INTERRUPTS();
				break;
			}
			MemoryContextSwitchTo(oldcxt);
			commit_batch_transaction();
			RESUME_CANCEL_INTERRUPTS();
			break;
		}
		MemoryContextSwitchTo(oldcxt);
		commit_batch_transaction();
		RESUME_CANCEL_INTERRUPTS();
		pgstat_report_stat(false);
	}
	MemoryContextDelete(batchcxt);
	asyncjobs_current_job_id = 0;
}
