/*-------------------------------------------------------------------------
 *
 * executor.c
 *	  Runs one job: its handler (or SQL command) in a subtransaction, as
 *	  the job's owner, under the type's timeout; captures the error if it
 *	  fails; and afterwards clears what the job may have left in the
 *	  session, so that the next job starts clean.
 *
 * The caller owns the top-level transaction: the job's effects and its
 * outcome row commit together, or not at all.
 *
 * Privileges: the job runs with SetUserIdAndSecContext(owner,
 * SECURITY_LOCAL_USERID_CHANGE), the same state as inside a SECURITY
 * DEFINER function.  Permission checks use the owner, and SET ROLE / SET
 * SESSION AUTHORIZATION are refused, so a job can never reach the
 * superuser the worker connects as.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"

#include "asyncjobs.h"

/* Prepared calls of handler functions, by function OID */
typedef struct HandlerPlan
{
	Oid			handler;		/* hash key */
	bool		direct;			/* called through fmgr, not a statement */
	SPIPlanPtr	plan;			/* else this statement calls it */
	bool		returns_void;
	char	   *context;		/* the error context line of that call */
} HandlerPlan;

static HTAB *handler_plans = NULL;

/* the context line of the running handler's call, to strip from errors */
static const char *call_context = NULL;

static char *run_handler(AsyncJob *job);
static char *run_sql(AsyncJob *job);
static HandlerPlan *handler_plan(Oid handler);
static char *call_handler(AsyncJob *job, bool returns_void);

static bool job_stopped(int64 job_id);

/*
 * Runs the job and fills in its outcome.  Must be called inside a
 * top-level transaction, in the memory context that should hold the
 * outcome; returns in the same transaction and context, with cancel
 * interrupts held off (HOLD_CANCEL_INTERRUPTS): the caller resumes them
 * once the outcome is committed, so that a cancel aimed at the job cannot
 * hit the writing of its outcome.
 */
void
asyncjobs_run_job(AsyncJob *job, AsyncJobOutcome *outcome)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	volatile bool held = false;
	bool		fused_limit;

	memset(outcome, 0, sizeof(AsyncJobOutcome));
	call_context = NULL;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);

	/*
	 * A job of a fused batch holds its row, and those of the batch's other
	 * jobs, locked while they look waiting: it may run AJ_FUSED_JOB_LIMIT_MS
	 * at most, then yields (below) to run again on its own.
	 */
	fused_limit = job->fused &&
		(job->timeout_ms <= 0 || job->timeout_ms > AJ_FUSED_JOB_LIMIT_MS);
	outcome->started = GetCurrentTimestamp();
	if (fused_limit)
		enable_timeout_after(STATEMENT_TIMEOUT, AJ_FUSED_JOB_LIMIT_MS);
	else if (job->timeout_ms > 0)
		enable_timeout_after(STATEMENT_TIMEOUT,
							 (int) Min(job->timeout_ms, (int64) INT_MAX));

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);

	/*
	 * The settings of jobs, in the subtransaction: every SET the job makes,
	 * LOCAL or not, ends with it (below, or with the subtransaction's
	 * abort).  Popped before the subtransaction ends, which then finds no
	 * setting to restore: one pass over all settings per job, not two.
	 */
	save_nestlevel = asyncjobs_enter_job_settings();

	PG_TRY();
	{
		char	   *result;

		/*
		 * From here a cancel or pause may interrupt the job (SIGINT).  One
		 * that came since the worker last looked at the job, and found it
		 * not yet interruptible, is caught here.
		 */
		MySlot->interruptible = true;
		pg_memory_barrier();
		if (pg_atomic_read_u32(&MySlot->control_seq) != job->control_seq &&
			job_stopped(job->id))
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("job %lld was canceled or paused before it started",
							(long long) job->id)));

		if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(job->owner)))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("owner of job %lld no longer exists",
							(long long) job->id)));

		SetUserIdAndSecContext(job->owner,
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());

		if (job->operationtype == AJ_OPTYPE_SQL)
			result = run_sql(job);
		else
			result = run_handler(job);

		/*
		 * An enqueue refused by loop protection fails the job for good, even
		 * if the handler caught that error.
		 */
		if (asyncjobs_loop_detected)
			ereport(ERROR,
					(errcode(ERRCODE_ASYNCJOBS_LOOP),
					 errmsg("infinite loop detected: the job tried to enqueue a job deeper than asyncjobs.max_depth (%d)",
							asyncjobs_max_depth),
					 errhint("Find the jobs that enqueue each other (they share a correlationid) and break the cycle.")));

		/* from here until the outcome is committed, no cancel interrupt */
		HOLD_CANCEL_INTERRUPTS();
		held = true;
		MySlot->interruptible = false;

		/* the result must outlive SPI and the subtransaction */
		if (result)
			result = MemoryContextStrdup(oldcxt, result);

		PopActiveSnapshot();
		SPI_finish();
		SetUserIdAndSecContext(save_userid, save_sec_context);

		AtEOXact_GUC(false, save_nestlevel);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;

		outcome->succeeded = true;
		outcome->result = result;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (!held)
		{
			HOLD_CANCEL_INTERRUPTS();
			held = true;
		}
		MySlot->interruptible = false;
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();

		/* restores the user, the snapshot stack and SPI */
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		SetUserIdAndSecContext(save_userid, save_sec_context);

		/* the last context line is our own call of the handler: drop it */
		if (edata->context && call_context)
		{
			size_t		clen = strlen(edata->context);
			size_t		llen = strlen(call_context);

			if (clen >= llen && strcmp(edata->context + clen - llen, call_context) == 0)
			{
				edata->context[clen - llen] = '\0';
				if (clen > llen && edata->context[clen - llen - 1] == '\n')
					edata->context[clen - llen - 1] = '\0';
				if (edata->context[0] == '\0')
					edata->context = NULL;
			}
		}

		outcome->succeeded = false;
		outcome->sqlerrcode = edata->sqlerrcode;
		outcome->friendly = pstrdup(edata->message ? edata->message : "unknown error");
		outcome->detail = edata->detail ? pstrdup(edata->detail) : NULL;
		outcome->hint = edata->hint ? pstrdup(edata->hint) : NULL;
		outcome->context = edata->context ? pstrdup(edata->context) : NULL;
		outcome->message = asyncjobs_error_report(edata);
		FreeErrorData(edata);
	}
	PG_END_TRY();

	outcome->ended = GetCurrentTimestamp();

	/*
	 * Canceled once its fused time limit was up: the limit's timer did it
	 * (nobody can cancel a job of a fused batch: its row is locked and not
	 * InProgress).  Not a failure: the job yields.
	 */
	if (fused_limit && !outcome->succeeded &&
		outcome->sqlerrcode == ERRCODE_QUERY_CANCELED &&
		outcome->ended - outcome->started >= (int64) AJ_FUSED_JOB_LIMIT_MS * 1000)
		outcome->yielded = true;

	/*
	 * Stop the job's timer.  Had it fired after the job finished, the
	 * cancel it asked for would hit the outcome's write instead: drop it.
	 */
	disable_timeout(STATEMENT_TIMEOUT, false);
	if (get_timeout_indicator(STATEMENT_TIMEOUT, true))
		QueryCancelPending = false;
}

/*
 * Calls the handler with the job's data; returns its result as jsonb text
 * (NULL for a void handler or a NULL result).
 */
static char *
run_handler(AsyncJob *job)
{
	HandlerPlan *hp;
	Datum		arg;
	char		nulls = ' ';
	int			rc;
	Datum		res;
	bool		isnull;

	if (!OidIsValid(job->handler))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("operation \"%s\" has no handler", job->operation)));

	hp = handler_plan(job->handler);
	arg = JsonbPGetDatum(job->data);
	if (hp->direct)
		return call_handler(job, hp->returns_void);
	call_context = hp->context;
	if (job->data == NULL)
		nulls = 'n';
	rc = SPI_execute_plan(hp->plan, &arg, &nulls, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));

	if (hp->returns_void || SPI_processed == 0)
		return NULL;
	res = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return NULL;
	asyncjobs_check_payload(DatumGetJsonbP(res), "job result");
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Calls a handler that takes jsonb and returns void or jsonb directly, as
 * the executor would for "SELECT handler($1)" but without a statement to
 * start and end for every job (a tenth of a no-op job's time): checks
 * the job owner's EXECUTE privilege, skips a strict handler's call on
 * NULL data, counts the call in pg_stat_user_functions.  The function's
 * lookup lives in the caller's SPI context, as the statement's did: a SQL
 * function builds its cache anew in each subtransaction.  Returns the
 * result as jsonb text, NULL for void or NULL.
 */
static char *
call_handler(AsyncJob *job, bool returns_void)
{
	LOCAL_FCINFO(fcinfo, 1);
	FmgrInfo	flinfo;
	PgStat_FunctionCallUsage fcusage;
	AclResult	aclresult;
	Datum		res;
	Jsonb	   *jb;

	aclresult = pg_proc_aclcheck(job->handler, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(job->handler));

	fmgr_info(job->handler, &flinfo);
	if (flinfo.fn_strict && job->data == NULL)
		return NULL;

	/* sees what the jobs before it in this transaction did */
	CommandCounterIncrement();
	UpdateActiveSnapshotCommandId();

	InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = JsonbPGetDatum(job->data);
	fcinfo->args[0].isnull = (job->data == NULL);
	pgstat_init_function_usage(fcinfo, &fcusage);
	res = FunctionCallInvoke(fcinfo);
	pgstat_end_function_usage(&fcusage, true);

	if (returns_void || fcinfo->isnull)
		return NULL;
	jb = DatumGetJsonbP(res);
	asyncjobs_check_payload(jb, "job result");
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

/*
 * Looks up (or prepares) the statement that calls a handler.  The plan is
 * kept for the life of the worker; plan invalidation takes care of DDL.
 */
static HandlerPlan *
handler_plan(Oid handler)
{
	HandlerPlan *hp;
	bool		found;
	HeapTuple	tup;
	Form_pg_proc proc;
	char	   *call;
	Oid			argtype = JSONBOID;

	if (handler_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(HandlerPlan);
		ctl.hcxt = TopMemoryContext;
		handler_plans = hash_create("asyncjobs handler plans", 16, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	hp = hash_search(handler_plans, &handler, HASH_FIND, NULL);
	if (hp)
		return hp;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("handler function with OID %u does not exist", handler),
				 errhint("Register the operation again with its current handler.")));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	call = quote_qualified_identifier(get_namespace_name(proc->pronamespace),
									  NameStr(proc->proname));
	if (proc->prorettype == VOIDOID)
		call = psprintf("SELECT %s($1::pg_catalog.jsonb)", call);
	else
		call = psprintf("SELECT pg_catalog.to_jsonb(%s($1::pg_catalog.jsonb))", call);

	hp = hash_search(handler_plans, &handler, HASH_ENTER, &found);
	hp->returns_void = (proc->prorettype == VOIDOID);
	/* a plain function of jsonb returning void or jsonb: no statement */
	hp->direct = proc->prokind == PROKIND_FUNCTION && !proc->proretset &&
		proc->pronargs == 1 && proc->proargtypes.values[0] == JSONBOID &&
		(proc->prorettype == VOIDOID || proc->prorettype == JSONBOID);
	hp->context = MemoryContextStrdup(TopMemoryContext,
									  psprintf("SQL statement \"%s\"", call));
	hp->plan = NULL;
	ReleaseSysCache(tup);
	if (hp->direct)
		return hp;

	hp->plan = SPI_prepare(call, 1, &argtype);
	if (hp->plan == NULL)
	{
		(void) hash_search(handler_plans, &handler, HASH_REMOVE, NULL);
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", call,
			 SPI_result_code_string(SPI_result));
	}
	SPI_keepplan(hp->plan);
	return hp;
}

/*
 * Runs the command of a SQL job (operationtype 54).  Its result is the
 * number of rows the last statement processed.
 */
static char *
run_sql(AsyncJob *job)
{
	Jsonb	   *data;
	JsonbValue	key;
	JsonbValue *cmd;
	char	   *command;
	int			rc;

	data = job->data;
	if (data == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("SQL job has no command"),
				 errdetail("The job's data is NULL.")));
	key.type = jbvString;
	key.val.string.val = "command";
	key.val.string.len = strlen("command");
	cmd = findJsonbValueFromContainer(&data->root, JB_FOBJECT, &key);
	if (cmd == NULL || cmd->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("SQL job has no command"),
				 errdetail("The job's data has no string member \"command\".")));
	command = pnstrdup(cmd->val.string.val, cmd->val.string.len);

	rc = SPI_execute(command, false, 0);
	if (rc == SPI_ERROR_TRANSACTION)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("transaction control statements are not allowed in a SQL job"),
				 errdetail("The job runs inside the worker's transaction, which commits the job's outcome together with its effects.")));
	if (rc < 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("statement not supported in a SQL job: %s",
						SPI_result_code_string(rc))));

	return psprintf("{\"rows\": " UINT64_FORMAT "}", (uint64) SPI_processed);
}

/*
 * Has the job been asked to stop (Pausing or Canceling)?  Run as the
 * worker's own user, inside the job's subtransaction.
 */
static bool
job_stopped(int64 job_id)
{
	static SPIPlanPtr plan = NULL;
	Datum		arg = Int64GetDatum(job_id);
	bool		stopped = false;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		Oid			type = INT8OID;

		plan = SPI_prepare("SELECT statuscode IN (21, 22) FROM asyncjobs.job "
						   "WHERE asyncoperationid = $1", 1, &type);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
	}
	if (SPI_execute_plan(plan, &arg, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the state of job %lld", (long long) job_id);
	if (SPI_processed > 0)
		stopped = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return stopped;
}

/*
 * The "stack trace" kept in the job's message column, in the shape psql
 * prints an error.
 */
char *
asyncjobs_error_report(ErrorData *edata)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "ERROR:  %s", edata->message ? edata->message : "");
	if (edata->detail)
		appendStringInfo(&buf, "\nDETAIL:  %s", edata->detail);
	if (edata->hint)
		appendStringInfo(&buf, "\nHINT:  %s", edata->hint);
	if (edata->context)
		appendStringInfo(&buf, "\nCONTEXT:  %s", edata->context);
	return buf.data;
}

/*
 * The search_path the jobs run with, and the worker's own.
 *
 * The worker runs its own queries as a superuser; the search_path of its
 * session comes from the database's settings, which a database owner who
 * is not a superuser may choose.  A schema of that owner's listed before
 * pg_catalog could then put a function or operator in the worker's
 * queries.  So the worker pins its own search_path to pg_catalog, pg_temp,
 * and gives each job (run as its owner, with only the owner's privileges)
 * the search_path the session started with.
 */
static char *job_search_path = NULL;

/*
 * Likewise enable_seqscan: the worker's statements look jobs up by key in
 * a table that is often empty when they are planned (a drained queue just
 * vacuumed), and a plan cached then would scan the whole table once it
 * has filled up.  Off for the worker, the session's own value for jobs.
 * And enable_bitmapscan: after an ANALYZE that saw a backlog, the claim
 * was planned as a bitmap scan of every due job plus a sort, instead of
 * the claim index read in order up to the LIMIT; it read the whole
 * backlog at every claim, and never marked the index entries of finished
 * jobs dead (found by bench/xmin).
 */
static char *job_enable_seqscan = NULL;
static char *job_enable_bitmapscan = NULL;

void
asyncjobs_pin_worker_settings(void)
{
	job_search_path = MemoryContextStrdup(TopMemoryContext,
										  GetConfigOption("search_path", false, false));
	job_enable_seqscan = MemoryContextStrdup(TopMemoryContext,
											 GetConfigOption("enable_seqscan", false, false));
	SetConfigOption("search_path", "pg_catalog, pg_temp",
					PGC_SUSET, PGC_S_SESSION);
	job_enable_bitmapscan = MemoryContextStrdup(TopMemoryContext,
												GetConfigOption("enable_bitmapscan", false, false));
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("enable_bitmapscan", "off", PGC_SUSET, PGC_S_SESSION);
}

/*
 * Gives the code of a job, from here until AtEOXact_GUC(.., nestlevel),
 * the search_path, enable_seqscan and enable_bitmapscan of jobs.  Returns
 * the GUC nest level to pop.
 */
int
asyncjobs_enter_job_settings(void)
{
	int			nestlevel = NewGUCNestLevel();

	if (job_search_path != NULL)
		(void) set_config_option("search_path", job_search_path,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	if (job_enable_seqscan != NULL)
		(void) set_config_option("enable_seqscan", job_enable_seqscan,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	if (job_enable_bitmapscan != NULL)
		(void) set_config_option("enable_bitmapscan", job_enable_bitmapscan,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * Clears the session state a job may leave behind, inside the job's
 * transaction and as the worker's own user: temporary tables, prepared
 * statements, LISTEN registrations and sequence caches.  (GUCs and the
 * role are restored by asyncjobs_run_job; session advisory locks are
 * released by the caller after commit.)
 */
void
asyncjobs_reset_session_state(void)
{
	Oid			temp_ns;
	Oid			temp_toast_ns;

	GetTempNamespaceState(&temp_ns, &temp_toast_ns);
	if (OidIsValid(temp_ns))
		ResetTempTableNamespace();
	DropAllPreparedStatements();
	Async_UnlistenAll();
	ResetSequenceCaches();
}
