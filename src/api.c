/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL-callable functions: register_operation, enqueue, enqueue_sql,
 *	  wait, current_job, and the internal helpers the SQL script uses.
 *
 * Functions that write the job tables capture the caller (GetUserId(): the
 * role a job will run as) and then do their reads and writes as the
 * extension's owner.  The tables themselves are closed to PUBLIC, so no
 * role can forge a job that runs as another.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "asyncjobs.h"

PG_FUNCTION_INFO_V1(asyncjobs_check_preloaded);
PG_FUNCTION_INFO_V1(asyncjobs_live_worker);
PG_FUNCTION_INFO_V1(asyncjobs_register_operation);
PG_FUNCTION_INFO_V1(asyncjobs_enqueue);
PG_FUNCTION_INFO_V1(asyncjobs_enqueue_sql);
PG_FUNCTION_INFO_V1(asyncjobs_enqueue_many);
PG_FUNCTION_INFO_V1(asyncjobs_wait);
PG_FUNCTION_INFO_V1(asyncjobs_current_job);
PG_FUNCTION_INFO_V1(asyncjobs_workers);
PG_FUNCTION_INFO_V1(asyncjobs_check_payload_sql);
PG_FUNCTION_INFO_V1(asyncjobs_database_changed);

bool		asyncjobs_loop_detected = false;

/* plans kept for the life of the backend */
static SPIPlanPtr type_plan = NULL;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr status_plan = NULL;

/*
 * State saved while a function acts as the extension's owner.
 */
typedef struct OwnerSwitch
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} OwnerSwitch;

/*
 * The owner of the extension's tables: the role that runs the writes of
 * the API functions.
 */
static Oid
extension_owner(void)
{
	Oid			nsp = get_namespace_oid(ASYNCJOBS_SCHEMA, false);
	Oid			relid = get_relname_relid("job", nsp);
	HeapTuple	tup;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"asyncjobs\" is not installed correctly"),
				 errdetail("Table asyncjobs.job does not exist.")));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Acts as the extension's owner, as a SECURITY DEFINER function would, and
 * with search_path pinned to pg_catalog, pg_temp for the queries run
 * meanwhile: the caller's search_path must not reach them, or a function
 * or operator of the caller's (say an "=" for text in a schema listed
 * before pg_catalog) would run with the owner's privileges.  Every query
 * of ours names the objects of the extension with their schema.
 *
 * Errors abort the (sub)transaction, which restores both by itself.
 */
static void
become_extension_owner(OwnerSwitch *sw)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&sw->save_userid, &sw->save_sec_context);
	sw->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	SetUserIdAndSecContext(owner,
						   sw->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

static void
restore_user(OwnerSwitch *sw)
{
	AtEOXact_GUC(true, sw->save_nestlevel);
	SetUserIdAndSecContext(sw->save_userid, sw->save_sec_context);
}

/*
 * Prepares a statement for the life of the backend.  Its plan is generic:
 * these statements look rows up by key, so a plan made for particular
 * values is no better, and planning again on every call (which the plan
 * cache would do for statements whose NULL parameters fold away) costs
 * more than the statement itself.
 */
static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes,
										  CURSOR_OPT_GENERIC_PLAN);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
require_not_null(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
}

/*
 * An interval as milliseconds, counting a month as 30 days.
 */
static int64
interval_ms(Interval *iv)
{
	return iv->time / 1000 +
		(int64) iv->day * SECS_PER_DAY * 1000 +
		(int64) iv->month * DAYS_PER_MONTH * SECS_PER_DAY * 1000;
}

static void
require_positive_interval(Interval *iv, const char *name)
{
	if (interval_ms(iv) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a positive interval", name),
				 errdetail("The value given is %s.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(iv))))));
}

/*
 * Checks a SQL job's command: it must parse and hold at least one
 * statement.  A syntax error is reported here, at enqueue, with the
 * parser's SQLSTATE (42601).
 */
static void
check_sql_command(const char *command)
{
	List	   *stmts;

	stmts = raw_parser(command, RAW_PARSE_DEFAULT);
	if (stmts == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("SQL job command is empty"),
				 errhint("Pass at least one SQL statement.")));
}

/*----
 * asyncjobs._check_preloaded()
 */
Datum
asyncjobs_check_preloaded(PG_FUNCTION_ARGS)
{
	asyncjobs_require_shmem();
	PG_RETURN_VOID();
}

/*----
 * asyncjobs._live_worker(worker bigint) -> boolean
 *
 * Whether a worker id belongs to a worker process that exists now.
 */
Datum
asyncjobs_live_worker(PG_FUNCTION_ARGS)
{
	int64		worker_id = PG_GETARG_INT64(0);
	bool		live = false;
	int			i;

	asyncjobs_require_shmem();
	LWLockAcquire(AsyncJobs->lock, LW_SHARED);
	for (i = 0; i < AsyncJobs->n_slots; i++)
	{
		AsyncJobsSlot *slot = &AsyncJobs->slots[i];

		if (slot->worker_id == worker_id &&
			slot->state != SLOT_FREE && slot->state != SLOT_EXITED)
		{
			live = true;
			break;
		}
	}
	LWLockRelease(AsyncJobs->lock);
	PG_RETURN_BOOL(live);
}

/*----
 * asyncjobs.register_operation(name, handler, max_retries, retry_delay,
 *		retry_delay_max, timeout, max_concurrency, priority)
 *
 * Creates the operation, or updates it when it exists and the caller owns
 * it.  A handler takes one jsonb argument and returns anything.
 */
Datum
asyncjobs_register_operation(PG_FUNCTION_ARGS)
{
	text	   *name_t;
	char	   *name;
	Oid			handler = InvalidOid;
	int32		max_retries;
	Interval   *retry_delay;
	Interval   *retry_delay_max;
	Interval   *timeout;
	Oid			caller = GetUserId();
	OwnerSwitch sw;
	int			rc;
	Datum		args[9];
	char		nulls[9];
	static SPIPlanPtr existing_plan = NULL;
	static SPIPlanPtr upsert_plan = NULL;

	asyncjobs_require_shmem();

	require_not_null(fcinfo, 0, "name");
	require_not_null(fcinfo, 2, "max_retries");
	require_not_null(fcinfo, 3, "retry_delay");
	require_not_null(fcinfo, 4, "retry_delay_max");
	require_not_null(fcinfo, 5, "timeout");
	require_not_null(fcinfo, 7, "priority");

	name_t = PG_GETARG_TEXT_PP(0);
	name = text_to_cstring(name_t);
	if (name[0] == '\0' || strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("operation name must have between 1 and %d characters",
						NAMEDATALEN - 1)));
	{
		const char *c;
		bool		blank = true;

		for (c = name; *c; c++)
		{
			if ((unsigned char) *c < 0x20 || *c == 0x7f)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("operation name must not contain control characters")));
			if (*c != ' ')
				blank = false;
		}
		if (blank)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("operation name must not be blank")));
	}

	max_retries = PG_GETARG_INT32(2);
	if (max_retries < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_retries must not be negative"),
				 errdetail("The value given is %d.", max_retries)));

	retry_delay = PG_GETARG_INTERVAL_P(3);
	retry_delay_max = PG_GETARG_INTERVAL_P(4);
	timeout = PG_GETARG_INTERVAL_P(5);
	require_positive_interval(retry_delay, "retry_delay");
	require_positive_interval(retry_delay_max, "retry_delay_max");
	require_positive_interval(timeout, "timeout");
	if (interval_ms(retry_delay_max) < interval_ms(retry_delay))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retry_delay_max must not be shorter than retry_delay")));
	/* a retry must fall due within the timestamp range: a year at most */
	if (interval_ms(retry_delay) > (int64) 366 * SECS_PER_DAY * 1000 ||
		interval_ms(retry_delay_max) > (int64) 366 * SECS_PER_DAY * 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retry_delay and retry_delay_max must not exceed 366 days")));
	if (interval_ms(timeout) > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be shorter than %d milliseconds", INT_MAX)));
	if (!PG_ARGISNULL(6) && PG_GETARG_INT32(6) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_concurrency must be positive or NULL"),
				 errdetail("The value given is %d.", PG_GETARG_INT32(6))));

	if (!PG_ARGISNULL(1))
	{
		HeapTuple	tup;
		Form_pg_proc proc;

		handler = PG_GETARG_OID(1);
		tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler));
		if (!HeapTupleIsValid(tup))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("function with OID %u does not exist", handler)));
		proc = (Form_pg_proc) GETSTRUCT(tup);
		if (proc->prokind != PROKIND_FUNCTION || proc->proretset ||
			proc->pronargs != 1 || proc->proargtypes.values[0] != JSONBOID)
		{
			char	   *fname = format_procedure(handler);

			ReleaseSysCache(tup);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
					 errmsg("function %s cannot be the handler of an operation", fname),
					 errdetail("A handler is a plain function that takes one argument of type jsonb and returns one value of any type."),
					 errhint("Write a wrapper such as CREATE FUNCTION my_handler(data jsonb) RETURNS jsonb.")));
		}
		ReleaseSysCache(tup);
		if (pg_proc_aclcheck(handler, caller, ACL_EXECUTE) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for function %s",
							format_procedure(handler)),
					 errdetail("Jobs of the operation run the handler as the role that enqueued them.")));
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_extension_owner(&sw);

	if (existing_plan == NULL)
	{
		Oid			t1[1] = {TEXTOID};
		Oid			t9[9] = {TEXTOID, OIDOID, INT4OID, INTERVALOID, INTERVALOID,
		INTERVALOID, INT4OID, INT4OID, OIDOID};

		existing_plan = prepare_kept(
									 "SELECT owner::oid, builtin FROM asyncjobs.operation_type "
									 "WHERE name = $1 FOR UPDATE", 1, t1);
		upsert_plan = prepare_kept(
								   "INSERT INTO asyncjobs.operation_type AS t "
								   "(name, operationtype, handler, max_retries, retry_delay, "
								   " retry_delay_max, timeout, max_concurrency, priority, owner) "
								   "VALUES ($1, 1, $2::pg_catalog.regprocedure, $3, $4, $5, $6, $7, $8, $9::pg_catalog.regrole) "
								   "ON CONFLICT (name) DO UPDATE SET "
								   " handler = excluded.handler, max_retries = excluded.max_retries, "
								   " retry_delay = excluded.retry_delay, "
								   " retry_delay_max = excluded.retry_delay_max, "
								   " timeout = excluded.timeout, "
								   " max_concurrency = excluded.max_concurrency, "
								   " priority = excluded.priority, modifiedon = pg_catalog.now()",
								   9, t9);
	}

	args[0] = PointerGetDatum(name_t);
	rc = SPI_execute_plan(existing_plan, args, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		bool		isnull;
		Oid			owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc,
														   1, &isnull));
		bool		builtin = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc,
														 2, &isnull));

		if (builtin && OidIsValid(handler))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("operation \"%s\" is built in; its handler cannot be set", name),
					 errhint("Register a new operation under another name.")));
		if (!builtin && !has_privs_of_role(caller, owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be owner of operation \"%s\"", name),
					 errdetail("Operation \"%s\" was registered by role %s.",
							   name, GetUserNameFromId(owner, false))));
		if (builtin && !superuser_arg(caller))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("only a superuser may change built-in operation \"%s\"", name)));
	}

	memset(nulls, ' ', sizeof(nulls));
	args[0] = PointerGetDatum(name_t);
	args[1] = ObjectIdGetDatum(handler);
	if (!OidIsValid(handler))
		nulls[1] = 'n';
	args[2] = Int32GetDatum(max_retries);
	args[3] = IntervalPGetDatum(retry_delay);
	args[4] = IntervalPGetDatum(retry_delay_max);
	args[5] = IntervalPGetDatum(timeout);
	if (PG_ARGISNULL(6))
	{
		args[6] = (Datum) 0;
		nulls[6] = 'n';
	}
	else
		args[6] = Int32GetDatum(PG_GETARG_INT32(6));
	args[7] = Int32GetDatum(PG_GETARG_INT32(7));
	args[8] = ObjectIdGetDatum(caller);
	rc = SPI_execute_plan(upsert_plan, args, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));

	restore_user(&sw);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Refuses a jsonb value larger than asyncjobs.max_payload_size: the data of
 * a job, or the result an external worker reports.  The size is that of
 * the value as the server holds it, before any compression, so that the
 * limit does not depend on how well a payload compresses.
 */
void
asyncjobs_check_payload(Jsonb *value, const char *what)
{
	int64		size = VARSIZE_ANY_EXHDR(value);
	int64		limit = (int64) asyncjobs_max_payload_size * 1024;

	if (size > limit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too large: %lld bytes", what, (long long) size),
				 errdetail("asyncjobs.max_payload_size is %d kB.",
						   asyncjobs_max_payload_size),
				 errhint("Keep large data in a table of your own and pass its key in the job's data.")));
}

/*
 * asyncjobs._check_payload(value jsonb, what text): the same check for the
 * SQL functions (external workers' results).
 */
Datum
asyncjobs_check_payload_sql(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0))
		asyncjobs_check_payload(PG_GETARG_JSONB_P(0),
								PG_ARGISNULL(1) ? "value" : text_to_cstring(PG_GETARG_TEXT_PP(1)));
	PG_RETURN_VOID();
}

static int	compare_int64(const void *a, const void *b);

/*
 * The work of enqueue(), enqueue_sql() and enqueue_many(): queues one job
 * for each of the n data values (never NULL), with the options of the
 * call, and stores their ids in ids[] in the same order.  A single job
 * with a dedupe key may get the id of the active job that holds the key.
 */
static void
enqueue_internal(FunctionCallInfo fcinfo, text *operation, Jsonb **datas,
				 int n, int64 *ids)
{
	Oid			caller = GetUserId();
	OwnerSwitch sw;
	int			rc;
	bool		isnull;
	int32		optype;
	Oid			handler;
	int32		type_max_retries;
	int32		type_priority;
	int32		max_retries;
	Datum		args[15];
	char		nulls[15];
	int64		id = 0;
	int32		depth = 1;
	bool		have_correlation = false;
	Datum		correlation = (Datum) 0;
	int			tries;
	static SPIPlanPtr parent_plan = NULL;
	static SPIPlanPtr dedupe_plan = NULL;
	static SPIPlanPtr recurrence_plan = NULL;
	static SPIPlanPtr insert_many_plan = NULL;
	int			i;

	for (i = 0; i < n; i++)
		asyncjobs_check_payload(datas[i], "job data");
	if (n > 1 && !PG_ARGISNULL(6))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dedupe_key cannot be given for several jobs at once"),
				 errdetail("All the jobs but one would be duplicates of the first."),
				 errhint("Enqueue jobs with dedupe keys one by one.")));
	if (!PG_ARGISNULL(7) && PG_GETARG_INT32(7) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_retries must not be negative"),
				 errdetail("The value given is %d.", PG_GETARG_INT32(7))));
	{
		/* the text options: not empty, and short enough for their indexes */
		static const struct
		{
			int			argno;
			const char *name;
		}			opts[] = {
			{2, "name"}, {5, "dependency_token"}, {6, "dedupe_key"}, {9, "regarding"}
		};
		int			i;

		for (i = 0; i < (int) lengthof(opts); i++)
		{
			int			len;

			if (PG_ARGISNULL(opts[i].argno))
				continue;
			len = VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(opts[i].argno));
			if (len == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("%s must not be empty", opts[i].name),
						 errhint("Pass NULL to leave it out.")));
			if (len > AJ_MAX_KEY_LENGTH)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("%s is too long: %d bytes", opts[i].name, len),
						 errdetail("At most %d bytes are allowed.", AJ_MAX_KEY_LENGTH),
						 errhint("Pass a hash of the value, e.g. md5(value).")));
		}
	}
	if (!PG_ARGISNULL(4) && TIMESTAMP_NOT_FINITE(PG_GETARG_TIMESTAMPTZ(4)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("postpone_until must be a finite timestamp")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_extension_owner(&sw);

	if (type_plan == NULL)
	{
		Oid			t1[1] = {TEXTOID};
		Oid			t2[2] = {TEXTOID, TEXTOID};
		Oid			t8[1] = {INT8OID};
		Oid			t15[15] = {TEXTOID, INT4OID, TEXTOID, OIDOID, TIMESTAMPTZOID,
			INT4OID, JSONBOID, INT4OID, TEXTOID, INT4OID, UUIDOID, INT8OID,
		TEXTOID, TEXTOID, TEXTOID};

		type_plan = prepare_kept(
								 "SELECT operationtype, handler::pg_catalog.oid, max_retries, priority "
								 "FROM asyncjobs.operation_type WHERE name = $1", 1, t1);
		parent_plan = prepare_kept(
								   "SELECT depth, correlationid, "
								   " correlationupdatedtime > pg_catalog.now() - interval '1 hour' "
								   "FROM asyncjobs.job WHERE asyncoperationid = $1", 1, t8);
		dedupe_plan = prepare_kept(
								   "SELECT asyncoperationid FROM asyncjobs.job "
								   "WHERE messagename = $1 AND dedupekey = $2", 2, t2);
		recurrence_plan = prepare_kept(
									   "SELECT asyncjobs._recurrence_step($1)", 1, t1);
		/*
		 * A job behind another of its dependency token waits (Suspended /
		 * Waiting); a key already held by an active job makes nothing.
		 */
		insert_plan = prepare_kept(
								   "INSERT INTO asyncjobs.job (name, operationtype, messagename, "
								   " statecode, statuscode, ownerid, postponeuntil, runafter, "
								   " maxretries, data, priority, depth, correlationid, "
								   " regardingobjectid, parentid, dependencytoken, dedupekey, "
								   " recurrencepattern, recurrencestarttime) "
								   "SELECT coalesce($1, $3), $2, $3, "
								   " CASE WHEN $5 > pg_catalog.now() OR w.behind THEN 1 ELSE 0 END, "
								   " CASE WHEN $5 > pg_catalog.now() OR w.behind THEN 10 ELSE 0 END, "
								   " $4::pg_catalog.regrole, $5, coalesce($5, pg_catalog.now()), "
								   " $6, $7, $8, $10, coalesce($11, pg_catalog.gen_random_uuid()), "
								   " $9, $12, $13, $14, $15, "
								   " CASE WHEN $15 IS NOT NULL THEN coalesce($5, pg_catalog.now()) END "
								   "FROM (SELECT $13 IS NOT NULL AND EXISTS ("
								   "       SELECT 1 FROM asyncjobs.job d WHERE d.dependencytoken = $13) AS behind) w "
								   "ON CONFLICT (messagename, dedupekey) WHERE dedupekey IS NOT NULL DO NOTHING "
								   "RETURNING asyncoperationid",
								   15, t15);
	}

	args[0] = PointerGetDatum(operation);
	rc = SPI_execute_plan(type_plan, args, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("operation \"%s\" is not registered",
						text_to_cstring(operation)),
				 errhint("Register it with asyncjobs.register_operation(), or use asyncjobs.enqueue_sql() to run SQL.")));
	optype = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	handler = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (isnull)
		handler = InvalidOid;
	type_max_retries = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	type_priority = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));

	if (OidIsValid(handler) &&
		pg_proc_aclcheck(handler, caller, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(handler)),
				 errdetail("Jobs of operation \"%s\" run this handler as the role that enqueues them.",
						   text_to_cstring(operation)),
				 errhint("Ask the function's owner to GRANT EXECUTE on it.")));

	for (i = 0; i < n && optype == AJ_OPTYPE_SQL; i++)
	{
		Jsonb	   *data = datas[i];
		JsonbValue	key;
		JsonbValue *cmd = NULL;

		key.type = jbvString;
		key.val.string.val = "command";
		key.val.string.len = strlen("command");
		if (JB_ROOT_IS_OBJECT(data))
			cmd = findJsonbValueFromContainer(&data->root, JB_FOBJECT, &key);
		if (cmd == NULL || cmd->type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a job of operation \"%s\" needs a string member \"command\" in its data",
							text_to_cstring(operation)),
					 errhint("Use asyncjobs.enqueue_sql(command).")));
		check_sql_command(pnstrdup(cmd->val.string.val, cmd->val.string.len));
	}

	max_retries = PG_ARGISNULL(7) ? type_max_retries : PG_GETARG_INT32(7);

	/* an invalid recurrence pattern is an error here, not at the first run */
	if (!PG_ARGISNULL(8))
	{
		args[0] = PG_GETARG_DATUM(8);
		rc = SPI_execute_plan(recurrence_plan, args, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	}

	/*
	 * Loop protection: a job enqueued by a running job is one deeper in
	 * the same correlation, unless the chain has been quiet for an hour.
	 */
	if (asyncjobs_current_job_id != 0)
	{
		args[0] = Int64GetDatum(asyncjobs_current_job_id);
		rc = SPI_execute_plan(parent_plan, args, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
		if (SPI_processed > 0)
		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			int32		parent_depth = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			bool		recent = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));

			correlation = SPI_datumTransfer(SPI_getbinval(tup, desc, 2, &isnull),
											false, UUID_LEN);
			have_correlation = true;
			depth = recent ? parent_depth + 1 : 1;
		}
		if (depth > asyncjobs_max_depth)
		{
			asyncjobs_loop_detected = true;
			ereport(ERROR,
					(errcode(ERRCODE_ASYNCJOBS_LOOP),
					 errmsg("infinite loop detected: job %lld would enqueue a job of depth %d, past asyncjobs.max_depth (%d)",
							(long long) asyncjobs_current_job_id, depth,
							asyncjobs_max_depth),
					 errdetail("Jobs that enqueue jobs form a chain of the same correlationid; this chain has not been quiet for an hour."),
					 errhint("Break the cycle: have the job check whether its work is already done before it enqueues more. "
							 "If the chain is meant to be this deep, raise asyncjobs.max_depth.")));
		}
	}

	memset(nulls, ' ', sizeof(nulls));
	if (PG_ARGISNULL(2))
	{
		args[0] = (Datum) 0;
		nulls[0] = 'n';
	}
	else
		args[0] = PG_GETARG_DATUM(2);
	args[1] = Int32GetDatum(optype);
	args[2] = PointerGetDatum(operation);
	args[3] = ObjectIdGetDatum(caller);
	if (PG_ARGISNULL(4))
	{
		args[4] = (Datum) 0;
		nulls[4] = 'n';
	}
	else
		args[4] = PG_GETARG_DATUM(4);
	args[5] = Int32GetDatum(max_retries);
	args[6] = JsonbPGetDatum(datas[0]);
	args[7] = Int32GetDatum(PG_ARGISNULL(3) ? type_priority : PG_GETARG_INT32(3));
	if (PG_ARGISNULL(9))
	{
		args[8] = (Datum) 0;
		nulls[8] = 'n';
	}
	else
		args[8] = PG_GETARG_DATUM(9);
	args[9] = Int32GetDatum(depth);
	args[10] = correlation;
	if (!have_correlation)
		nulls[10] = 'n';
	args[11] = Int64GetDatum(asyncjobs_current_job_id);
	if (asyncjobs_current_job_id == 0)
		nulls[11] = 'n';
	/* dependency_token, dedupe_key, recurrence: $13, $14, $15 */
	args[12] = PG_ARGISNULL(5) ? (Datum) 0 : PG_GETARG_DATUM(5);
	nulls[12] = PG_ARGISNULL(5) ? 'n' : ' ';
	args[13] = PG_ARGISNULL(6) ? (Datum) 0 : PG_GETARG_DATUM(6);
	nulls[13] = PG_ARGISNULL(6) ? 'n' : ' ';
	args[14] = PG_ARGISNULL(8) ? (Datum) 0 : PG_GETARG_DATUM(8);
	nulls[14] = PG_ARGISNULL(8) ? 'n' : ' ';

	if (n > 1)
	{
		Datum	   *elems = palloc(sizeof(Datum) * n);
		uint64		r;

		if (insert_many_plan == NULL)
		{
			Oid			t15[15] = {TEXTOID, INT4OID, TEXTOID, OIDOID, TIMESTAMPTZOID,
				INT4OID, JSONBARRAYOID, INT4OID, TEXTOID, INT4OID, UUIDOID, INT8OID,
			TEXTOID, TEXTOID, TEXTOID};

			/*
			 * One statement for all: jobs 2..n of a dependency token wait
			 * behind the first; ids follow the order of the data.
			 */
			insert_many_plan = prepare_kept(
											"INSERT INTO asyncjobs.job (name, operationtype, messagename, "
											" statecode, statuscode, ownerid, postponeuntil, runafter, "
											" maxretries, data, priority, depth, correlationid, "
											" regardingobjectid, parentid, dependencytoken, dedupekey, "
											" recurrencepattern, recurrencestarttime) "
											"SELECT coalesce($1, $3), $2, $3, "
											" CASE WHEN $5 > pg_catalog.now() OR w.behind OR ($13 IS NOT NULL AND d.ord > 1) THEN 1 ELSE 0 END, "
											" CASE WHEN $5 > pg_catalog.now() OR w.behind OR ($13 IS NOT NULL AND d.ord > 1) THEN 10 ELSE 0 END, "
											" $4::pg_catalog.regrole, $5, coalesce($5, pg_catalog.now()), "
											" $6, d.data, $8, $10, coalesce($11, pg_catalog.gen_random_uuid()), "
											" $9, $12, $13, $14, $15, "
											" CASE WHEN $15 IS NOT NULL THEN coalesce($5, pg_catalog.now()) END "
											"FROM pg_catalog.unnest($7) WITH ORDINALITY AS d(data, ord), "
											" (SELECT $13 IS NOT NULL AND EXISTS ("
											"   SELECT 1 FROM asyncjobs.job j WHERE j.dependencytoken = $13) AS behind) w "
											"ORDER BY d.ord "
											"RETURNING asyncoperationid",
											15, t15);
		}
		for (i = 0; i < n; i++)
			elems[i] = JsonbPGetDatum(datas[i]);
		args[6] = PointerGetDatum(construct_array(elems, n, JSONBOID, -1, false, TYPALIGN_INT));
		rc = SPI_execute_plan(insert_many_plan, args, nulls, false, 0);
		if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != (uint64) n)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
		for (r = 0; r < SPI_processed; r++)
			ids[r] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
												 SPI_tuptable->tupdesc, 1, &isnull));
		/* the ids were drawn in the order of the data */
		qsort(ids, n, sizeof(int64), compare_int64);
		restore_user(&sw);
		SPI_finish();
		asyncjobs_wake_at_commit();
		return;
	}

	/*
	 * With a dedupe key, an active job with the same key makes the insert
	 * do nothing: return that job.  If it completed in between, insert
	 * again.
	 */
	for (tries = 0; tries < 10 && id == 0; tries++)
	{
		rc = SPI_execute_plan(insert_plan, args, nulls, false, 1);
		if (rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
		{
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
			break;
		}
		else
		{
			Datum		dargs[2] = {PointerGetDatum(operation), args[13]};

			rc = SPI_execute_plan(dedupe_plan, dargs, NULL, false, 1);
			if (rc != SPI_OK_SELECT)
				elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
			if (SPI_processed == 1)
			{
				id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
				restore_user(&sw);
				SPI_finish();
				/* nothing new: no worker to wake */
				ids[0] = id;
				return;
			}
		}
	}
	if (id == 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not enqueue with dedupe key \"%s\": it kept changing hands",
						TextDatumGetCString(args[13])),
				 errhint("Try the enqueue again.")));

	restore_user(&sw);
	SPI_finish();

	asyncjobs_wake_at_commit();
	ids[0] = id;
}

static int
compare_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*----
 * asyncjobs.enqueue(operation, data, name, priority, postpone_until,
 *		dependency_token, dedupe_key, max_retries, recurrence, regarding)
 */
Datum
asyncjobs_enqueue(PG_FUNCTION_ARGS)
{
	Jsonb	   *data;
	int64		id;

	asyncjobs_require_shmem();
	require_not_null(fcinfo, 0, "operation");
	if (PG_ARGISNULL(1))
		data = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	else
		data = PG_GETARG_JSONB_P(1);

	enqueue_internal(fcinfo, PG_GETARG_TEXT_PP(0), &data, 1, &id);
	PG_RETURN_INT64(id);
}

/*----
 * asyncjobs.enqueue_many(operation, data jsonb[], <the options of enqueue>)
 *		RETURNS SETOF bigint
 *
 * One job per element of data, in one statement; returns their ids in the
 * order of data.
 */
Datum
asyncjobs_enqueue_many(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	int			i;
	Jsonb	  **datas;
	int64	   *ids;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	asyncjobs_require_shmem();
	require_not_null(fcinfo, 0, "operation");
	require_not_null(fcinfo, 1, "data");
	/* a set of bigint: the caller's expected row of one column */
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	arr = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("data must be a one-dimensional array")));
	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	if (n == 0)
		return (Datum) 0;
	datas = palloc(sizeof(Jsonb *) * n);
	ids = palloc(sizeof(int64) * n);
	for (i = 0; i < n; i++)
	{
		if (enulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("data[%d] must not be NULL", i + 1),
					 errhint("Use '{}' for a job without data.")));
		datas[i] = DatumGetJsonbP(elems[i]);
	}

	enqueue_internal(fcinfo, PG_GETARG_TEXT_PP(0), datas, n, ids);

	for (i = 0; i < n; i++)
	{
		Datum		v = Int64GetDatum(ids[i]);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &v, &isnull);
	}
	return (Datum) 0;
}

/*----
 * asyncjobs.enqueue_sql(command, data, <the options of enqueue>)
 *
 * A job of the built-in "sql" operation: data is the caller's data (an
 * object) with the command added as its "command" member.
 */
Datum
asyncjobs_enqueue_sql(PG_FUNCTION_ARGS)
{
	char	   *command;
	Jsonb	   *data;
	int64		id;
	StringInfoData buf;
	Datum		cmdjson;

	asyncjobs_require_shmem();
	require_not_null(fcinfo, 0, "command");
	command = text_to_cstring(PG_GETARG_TEXT_PP(0));

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"command\": ");
	escape_json(&buf, command);
	appendStringInfoChar(&buf, '}');
	cmdjson = DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));

	if (PG_ARGISNULL(1))
		data = DatumGetJsonbP(cmdjson);
	else
	{
		Jsonb	   *given = PG_GETARG_JSONB_P(1);

		if (!JB_ROOT_IS_OBJECT(given))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("data of a SQL job must be a JSON object")));
		data = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
												  JsonbPGetDatum(given), cmdjson));
	}

	enqueue_internal(fcinfo, cstring_to_text("sql"), &data, 1, &id);
	PG_RETURN_INT64(id);
}

/*----
 * asyncjobs.wait(job bigint, timeout interval) -> smallint
 *
 * Sleeps until the job completes (woken by the workers when they commit
 * outcomes) or the timeout passes, and returns the job's statuscode.
 */
Datum
asyncjobs_wait(PG_FUNCTION_ARGS)
{
	int64		job;
	int64		timeout_ms;
	TimestampTz deadline;
	OwnerSwitch sw;
	int16		status = -1;
	Oid			caller = GetUserId();
	bool		checked = false;

	asyncjobs_require_shmem();
	require_not_null(fcinfo, 0, "job");
	require_not_null(fcinfo, 1, "timeout");
	job = PG_GETARG_INT64(0);
	timeout_ms = interval_ms(PG_GETARG_INTERVAL_P(1));
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("asyncjobs.wait() cannot be used in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("Such a transaction never sees the job's outcome commit."),
				 errhint("Call it in a READ COMMITTED transaction.")));

	/* a timeout past the end of the timestamp range waits without end */
	if (timeout_ms > (END_TIMESTAMP - GetCurrentTimestamp()) / 1000 - 1)
		deadline = DT_NOEND;
	else
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_extension_owner(&sw);
	if (status_plan == NULL)
	{
		Oid			t1[1] = {INT8OID};

		status_plan = prepare_kept(
								   "SELECT statuscode, xmin, ownerid::pg_catalog.oid FROM asyncjobs.job "
								   "WHERE asyncoperationid = $1 "
								   "UNION ALL "
								   "SELECT statuscode, NULL, ownerid::pg_catalog.oid FROM asyncjobs.job_history "
								   "WHERE asyncoperationid = $1",
								   1, t1);
	}

	ConditionVariablePrepareToSleep(&AsyncJobs->completion_cv);
	for (;;)
	{
		Datum		arg = Int64GetDatum(job);
		bool		isnull;
		int			rc;
		long		remaining;

		rc = SPI_execute_plan(status_plan, &arg, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("job %lld does not exist", (long long) job)));
		status = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		if (!checked)
		{
			Oid			owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
															   SPI_tuptable->tupdesc, 3, &isnull));
			Oid			admin = get_role_oid("asyncjobs_admin", true);

			if (!has_privs_of_role(caller, owner) &&
				!(OidIsValid(admin) && has_privs_of_role(caller, admin)))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("permission denied for job %lld", (long long) job),
						 errhint("Only the job's owner, roles with its privileges, members of asyncjobs_admin and superusers may wait for it.")));
			checked = true;
		}
		if (status >= AJ_STATUS_SUCCEEDED)
			break;
		{
			Datum		xmin = SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 2, &isnull);

			if (!isnull &&
				TransactionIdIsCurrentTransactionId(DatumGetTransactionId(xmin)))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("job %lld was enqueued or changed by the current transaction",
								(long long) job),
						 errdetail("No worker can start it before this transaction commits."),
						 errhint("Commit first, then wait for the job.")));
		}

		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		/* woken by every commit of outcomes; the cap guards a missed one */
		(void) ConditionVariableTimedSleep(&AsyncJobs->completion_cv,
										   Min(remaining, 1000L),
										   PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();

	restore_user(&sw);
	SPI_finish();
	PG_RETURN_INT16(status);
}

/*----
 * asyncjobs.current_job() -> bigint
 */
Datum
asyncjobs_current_job(PG_FUNCTION_ARGS)
{
	if (asyncjobs_current_job_id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(asyncjobs_current_job_id);
}

/*----
 * asyncjobs._workers() -> setof record
 */
Datum
asyncjobs_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;
	static const char *const state_names[] = {
		"free", "starting", "idle", "claiming", "running", "exited"
	};

	asyncjobs_require_shmem();
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(AsyncJobs->lock, LW_SHARED);
	for (i = 0; i < AsyncJobs->n_slots; i++)
	{
		AsyncJobsSlot *slot = &AsyncJobs->slots[i];
		Datum		values[9];
		bool		nulls[9];

		if (slot->pid == 0 || slot->state == SLOT_FREE ||
			slot->state == SLOT_EXITED)
			continue;
		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(slot->pid);
		values[1] = ObjectIdGetDatum(slot->dboid);
		values[2] = Int64GetDatum(slot->worker_id);
		if (slot->job_id != 0)
		{
			values[3] = Int64GetDatum(slot->job_id);
			values[4] = CStringGetTextDatum(slot->operation);
			values[5] = TimestampTzGetDatum(slot->since);
		}
		else
			nulls[3] = nulls[4] = nulls[5] = true;
		values[6] = TimestampTzGetDatum(slot->started);
		values[7] = CStringGetTextDatum(state_names[slot->state]);
		values[8] = Int64GetDatum(slot->jobs_done);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(AsyncJobs->lock);

	return (Datum) 0;
}

/*----
 * asyncjobs._wake_at_commit()
 */
PG_FUNCTION_INFO_V1(asyncjobs_wake_at_commit_sql);

Datum
asyncjobs_wake_at_commit_sql(PG_FUNCTION_ARGS)
{
	asyncjobs_require_shmem();
	asyncjobs_wake_at_commit();
	PG_RETURN_VOID();
}

/*----
 * asyncjobs._database_changed()
 *
 * CREATE EXTENSION calls this: when the transaction commits, the launcher
 * starts this database's workers.
 */
Datum
asyncjobs_database_changed(PG_FUNCTION_ARGS)
{
	asyncjobs_require_shmem();
	asyncjobs_notify_launcher_at_commit();
	PG_RETURN_VOID();
}

/*
 * Plans of asyncjobs_api_call, by the OID of the calling SQL function.
 */
typedef struct ApiPlan
{
	Oid			fn_oid;			/* hash key */
	SPIPlanPtr	plan;
	bool		retset;
	bool		typbyval;
	int16		typlen;
} ApiPlan;

static HTAB *api_plans = NULL;

static ApiPlan *
api_plan(Oid fn_oid)
{
	ApiPlan    *ap;
	bool		found;
	HeapTuple	tup;
	Form_pg_proc proc;
	StringInfoData sql;
	Oid		   *argtypes;
	int			i;

	if (api_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(ApiPlan);
		ctl.hcxt = TopMemoryContext;
		api_plans = hash_create("asyncjobs API plans", 32, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	ap = hash_search(api_plans, &fn_oid, HASH_FIND, NULL);
	if (ap)
		return ap;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn_oid);
	proc = (Form_pg_proc) GETSTRUCT(tup);

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s%s($1::pg_catalog.regrole",
					 proc->proretset ? "* FROM " : "",
					 quote_qualified_identifier(ASYNCJOBS_SCHEMA,
												psprintf("_%s_impl", NameStr(proc->proname))));
	argtypes = palloc(sizeof(Oid) * (proc->pronargs + 1));
	argtypes[0] = OIDOID;
	for (i = 0; i < proc->pronargs; i++)
	{
		argtypes[i + 1] = proc->proargtypes.values[i];
		appendStringInfo(&sql, ", $%d", i + 2);
	}
	appendStringInfoChar(&sql, ')');

	ap = hash_search(api_plans, &fn_oid, HASH_ENTER, &found);
	ap->retset = proc->proretset;
	get_typlenbyval(proc->prorettype, &ap->typlen, &ap->typbyval);
	ap->plan = SPI_prepare(sql.data, proc->pronargs + 1, argtypes);
	ReleaseSysCache(tup);
	if (ap->plan == NULL)
	{
		(void) hash_search(api_plans, &fn_oid, HASH_REMOVE, NULL);
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql.data,
			 SPI_result_code_string(SPI_result));
	}
	SPI_keepplan(ap->plan);
	return ap;
}

/*----
 * The C side of most API functions.  A function declared
 *
 *		CREATE FUNCTION asyncjobs.NAME(args) ... LANGUAGE C
 *		AS 'MODULE_PATHNAME', 'asyncjobs_api_call';
 *
 * captures its caller (GetUserId(): current_user, even inside SECURITY
 * DEFINER functions of the caller) and then, as the extension's owner,
 * runs asyncjobs._NAME_impl(caller regrole, args) and returns its result.
 * The _impl functions are not executable by PUBLIC, so the caller they are
 * told about is always the real one: this is how plpgsql code learns who
 * asks, to check that the caller may manage a job.
 */
PG_FUNCTION_INFO_V1(asyncjobs_api_call);

Datum
asyncjobs_api_call(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	ApiPlan    *volatile ap;
	OwnerSwitch sw;
	Datum	   *args;
	char	   *nulls;
	int			nargs = PG_NARGS();
	int			i;
	int			rc;
	volatile Datum result = (Datum) 0;
	volatile bool isnull = true;
	MemoryContext oldcxt = CurrentMemoryContext;

	asyncjobs_require_shmem();

	args = palloc(sizeof(Datum) * (nargs + 1));
	nulls = palloc(nargs + 2);
	args[0] = ObjectIdGetDatum(caller);
	nulls[0] = ' ';
	for (i = 0; i < nargs; i++)
	{
		args[i + 1] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i + 1] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	nulls[nargs + 1] = '\0';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_extension_owner(&sw);
	ap = api_plan(fcinfo->flinfo->fn_oid);

	/*
	 * Errors meant for the caller (bad input, wrong state, no permission)
	 * lose the CONTEXT lines of our internal functions: they would only
	 * show how the API is built.
	 */
	PG_TRY();
	{
		if (ap->retset)
		{
			ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
			uint64		r;

			InitMaterializedSRF(fcinfo, 0);
			rc = SPI_execute_plan(ap->plan, args, nulls, false, 0);
			if (rc < 0)
				elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
			for (r = 0; r < SPI_processed; r++)
			{
				int			natts = rsinfo->setDesc->natts;
				Datum	   *values = palloc(sizeof(Datum) * natts);
				bool	   *vnulls = palloc(sizeof(bool) * natts);

				heap_deform_tuple(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
								  values, vnulls);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, vnulls);
			}
		}
		else
		{
			rc = SPI_execute_plan(ap->plan, args, nulls, false, 1);
			if (rc < 0)
				elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
			if (SPI_processed > 0)
			{
				bool		rnull;
				Datum		r = SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &rnull);

				if (!rnull)
					result = SPI_datumTransfer(r, ap->typbyval, ap->typlen);
				isnull = rnull;
			}
		}
	}
	PG_CATCH();
	{
		MemoryContext ecxt = MemoryContextSwitchTo(oldcxt);
		ErrorData  *edata = CopyErrorData();

		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_INTERNAL_ERROR &&
			edata->elevel == ERROR)
		{
			FlushErrorState();
			edata->context = NULL;
			ReThrowError(edata);
		}
		MemoryContextSwitchTo(ecxt);
		PG_RE_THROW();
	}
	PG_END_TRY();

	restore_user(&sw);
	SPI_finish();

	if (ap->retset)
		return (Datum) 0;
	if (isnull)
		PG_RETURN_NULL();
	return result;
}

/*----
 * asyncjobs._interrupt_worker(worker bigint, job bigint) -> boolean
 *
 * Tells the worker holding a job that the job's state was changed under it
 * (cancel, pause): the worker checks before it starts the job, and if it
 * runs the job now, the job is interrupted as by pg_cancel_backend().
 * Returns whether the job was running.
 */
PG_FUNCTION_INFO_V1(asyncjobs_interrupt_worker);

Datum
asyncjobs_interrupt_worker(PG_FUNCTION_ARGS)
{
	int64		worker_id = PG_GETARG_INT64(0);
	int64		job = PG_GETARG_INT64(1);
	bool		running = false;
	int			i;

	asyncjobs_require_shmem();
	LWLockAcquire(AsyncJobs->lock, LW_SHARED);
	for (i = 0; i < AsyncJobs->n_slots; i++)
	{
		AsyncJobsSlot *slot = &AsyncJobs->slots[i];

		if (slot->worker_id != worker_id || slot->pid == 0)
			continue;
		pg_atomic_fetch_add_u32(&slot->control_seq, 1);
		if (slot->job_id == job && slot->interruptible)
		{
			running = true;
			(void) kill(slot->pid, SIGINT);
		}
		if (slot->latch)
			SetLatch(slot->latch);
		break;
	}
	LWLockRelease(AsyncJobs->lock);
	PG_RETURN_BOOL(running);
}
