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

#include "access/amapi.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "rewrite/rewriteHandler.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
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
 * The extension's tables and their owner (the role that runs the writes of
 * the API functions), looked up once per backend: every API call needs the
 * owner, and the enqueue path the tables' OIDs.
 *
 * The entry is forgotten on any relcache invalidation of asyncjobs.job
 * (ALTER TABLE ... OWNER TO, DROP EXTENSION, a new index) or a flush of
 * the whole relcache, and on any change of a schema (a renamed schema
 * asyncjobs must give the error it gave).  These are the invalidation
 * messages that refresh the syscache entries the lookups read, so the
 * entry is exactly as fresh as those lookups were.
 */
typedef struct ExtensionRels
{
	bool		valid;
	Oid			job;			/* asyncjobs.job */
	Oid			operation_type; /* asyncjobs.operation_type */
	Oid			owner;			/* owner of asyncjobs.job */
} ExtensionRels;

static ExtensionRels ext_rels;

/*
 * Counts the invalidations the caches of this file acted on: a cache built
 * while one arrived is built again (its lookups may have read the old
 * state).
 */
static uint64 enqueue_inval_count = 0;

static void register_cache_callbacks(void);

static void
load_extension_rels(void)
{
	ExtensionRels r;
	uint64		seen;

	register_cache_callbacks();
	do
	{
		Oid			nsp;
		HeapTuple	tup;

		seen = enqueue_inval_count;
		nsp = get_namespace_oid(ASYNCJOBS_SCHEMA, false);
		r.job = get_relname_relid("job", nsp);
		if (!OidIsValid(r.job))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"asyncjobs\" is not installed correctly"),
					 errdetail("Table asyncjobs.job does not exist.")));
		r.operation_type = get_relname_relid("operation_type", nsp);
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(r.job));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for relation %u", r.job);
		r.owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);
	} while (seen != enqueue_inval_count);

	r.valid = true;
	ext_rels = r;
}

/*
 * The owner of the extension's tables.
 */
static Oid
extension_owner(void)
{
	if (!ext_rels.valid)
		load_extension_rels();
	return ext_rels.owner;
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
	asyncjobs_require_shmem();
	PG_RETURN_BOOL(asyncjobs_worker_live(PG_GETARG_INT64(0)));
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
static void enqueued_at_commit(Datum *args, const char *nulls);

/*----------
 * The enqueue path
 *
 * An enqueue used to run two SPI statements: a SELECT of the operation's
 * type and an INSERT ... SELECT ... ON CONFLICT of the job.  Profiled with
 * perf (100 enqueue() calls per commit, 92 us per job against 12 us for a
 * row of a plain 100-row INSERT), most of its time went to setting those
 * statements up and tearing them down — executor start-up alone 27 us: the
 * INSERT's plan, its sub-select and ON CONFLICT arbiter, opening the job
 * table's six indexes and compiling the predicates of the partial ones —
 * plus the plan cache's checks and saving and restoring the pinned
 * search_path, around one heap insert and two index insertions.  So the
 * common case is done here directly:
 *
 *	- the operation's type comes from a cache, filled by an index scan of
 *	  asyncjobs.operation_type (optype_cache, lookup_operation);
 *	- a job without dedupe_key or dependency_token, which needs neither ON
 *	  CONFLICT nor a look at other jobs, is inserted the way COPY and the
 *	  logical replication worker insert rows: table_tuple_insert() and
 *	  ExecInsertIndexTuples(), with the table's own column defaults (as
 *	  the rewriter fills them in) and the index metadata, both kept per
 *	  backend (insert_jobs_direct).
 *
 * The direct insert makes the checks the executor would make: no INSERT
 * in a read-only transaction or in parallel mode, the owner's INSERT and
 * SELECT privileges on the table, NOT NULL constraints; and it runs as the
 * extension's owner like the INSERT did, so nextval() of the id sequence is
 * checked for the same role.  It steps aside, leaving the SQL INSERT to
 * run, whenever the table has something the executor would do more for:
 * triggers, rules, forced row-level security, generated columns, CHECK
 * constraints, an index other than a plain btree, a column of another type
 * than expected.
 *
 * Both direct paths run nothing but functions built into the server: they
 * step aside as well when a default, an index expression or predicate, or
 * an index's support function is user-defined.  Nothing on them is parsed
 * or looked up by name either, so the caller's search_path, which they do
 * not pin, cannot reach them, and no code of anyone's runs as the owner.
 *----------
 */

/* What enqueue needs of an operation type */
typedef struct OpType
{
	int32		optype;
	Oid			handler;		/* InvalidOid: none */
	int32		max_retries;
	int32		priority;
} OpType;

/*
 * The operation types enqueue looked up, by name, so that an enqueue does
 * not read asyncjobs.operation_type each time (an index scan was a tenth
 * of the CPU time of a one-job transaction).
 *
 * Any write to asyncjobs.operation_type sends a relcache invalidation of
 * the table (its trigger, asyncjobs._operation_type_changed, which fires
 * even under session_replication_role = replica; nothing is kept while it
 * is missing or disabled), and the invalidation empties the cache: in the writing session at its next command
 * (lookup_operation increments the command counter before it reads, as an
 * SPI statement did), and when the write rolls back, in the whole
 * transaction or a subtransaction; in every other session once the write
 * commits, since lookup_operation processes pending invalidations first
 * (and a COMMIT returns only after sending them).  So in READ COMMITTED
 * an entry is what a read with a new snapshot would find, and it is kept
 * for the backend's life (lxid invalid).
 *
 * REPEATABLE READ and SERIALIZABLE transactions read the table with their
 * transaction snapshot, which may be older than the cache: they neither
 * use nor fill those entries, but entries of their own that die with the
 * transaction (lxid set).
 */
#define OPTYPE_CACHE_SIZE	16

typedef struct OpTypeEntry
{
	LocalTransactionId lxid;	/* transaction it belongs to, or invalid */
	int			len;
	char		name[NAMEDATALEN];
	OpType		type;
} OpTypeEntry;

static OpTypeEntry optype_cache[OPTYPE_CACHE_SIZE];
static int	optype_cache_used = 0;
static int	optype_cache_next = 0;

/*
 * The columns of a job that enqueue sets, as the INSERT of insert_plan
 * lists them; the job's id is the default of asyncoperationid, returned.
 * The other columns take the table's defaults.
 */
typedef enum JobColumn
{
	JC_NAME,
	JC_OPERATIONTYPE,
	JC_MESSAGENAME,
	JC_STATECODE,
	JC_STATUSCODE,
	JC_OWNERID,
	JC_POSTPONEUNTIL,
	JC_RUNAFTER,
	JC_MAXRETRIES,
	JC_DATA,
	JC_PRIORITY,
	JC_DEPTH,
	JC_CORRELATIONID,
	JC_REGARDING,
	JC_PARENTID,
	JC_DEPENDENCYTOKEN,
	JC_DEDUPEKEY,
	JC_RECURRENCEPATTERN,
	JC_RECURRENCESTART,
	JC_NSET,					/* the columns above are set by enqueue */
	JC_ID = JC_NSET,			/* asyncoperationid */
	JC_COUNT
} JobColumn;

static const struct
{
	const char *name;
	Oid			type;
}			job_columns[JC_COUNT] =
{
	[JC_NAME] = {"name", TEXTOID},
	[JC_OPERATIONTYPE] = {"operationtype", INT4OID},
	[JC_MESSAGENAME] = {"messagename", TEXTOID},
	[JC_STATECODE] = {"statecode", INT2OID},
	[JC_STATUSCODE] = {"statuscode", INT2OID},
	[JC_OWNERID] = {"ownerid", REGROLEOID},
	[JC_POSTPONEUNTIL] = {"postponeuntil", TIMESTAMPTZOID},
	[JC_RUNAFTER] = {"runafter", TIMESTAMPTZOID},
	[JC_MAXRETRIES] = {"maxretries", INT4OID},
	[JC_DATA] = {"data", JSONBOID},
	[JC_PRIORITY] = {"priority", INT4OID},
	[JC_DEPTH] = {"depth", INT4OID},
	[JC_CORRELATIONID] = {"correlationid", UUIDOID},
	[JC_REGARDING] = {"regardingobjectid", TEXTOID},
	[JC_PARENTID] = {"parentid", INT8OID},
	[JC_DEPENDENCYTOKEN] = {"dependencytoken", TEXTOID},
	[JC_DEDUPEKEY] = {"dedupekey", TEXTOID},
	[JC_RECURRENCEPATTERN] = {"recurrencepattern", TEXTOID},
	[JC_RECURRENCESTART] = {"recurrencestarttime", TIMESTAMPTZOID},
	[JC_ID] = {"asyncoperationid", INT8OID},
};

/*
 * What the direct insert needs of asyncjobs.job, built from its relcache
 * entry once per backend and rebuilt after a relcache invalidation of the
 * table or of one of its indexes (a new, dropped or readied index, new
 * defaults, a trigger, ...).  The expression states of the defaults and
 * of the indexes' predicates live in cxt: they hold no reference to a
 * query or a transaction.
 */
typedef struct JobInsertInfo
{
	bool		valid;			/* false: build again before use */
	bool		direct;			/* whether the direct insert may be used */
	bool		busy;			/* a direct insert runs now */
	Oid			relid;
	MemoryContext cxt;
	AttrNumber	attno[JC_COUNT];	/* column of each JobColumn */
	int			natts;
	ExprState **defaults;		/* [natts]: default of a column enqueue does
								 * not set, or NULL */
	int			nindexes;
	Oid		   *index_oids;
	IndexInfo **index_info;		/* predicates and expressions compiled */
} JobInsertInfo;

static JobInsertInfo job_insert;

static void
forget_enqueue_caches(void)
{
	ext_rels.valid = false;
	job_insert.valid = false;
	optype_cache_used = 0;
	enqueue_inval_count++;
}

static void
enqueue_relcache_callback(Datum arg, Oid relid)
{
	int			i;

	if (!OidIsValid(relid) || relid == ext_rels.job ||
		relid == job_insert.relid)
	{
		forget_enqueue_caches();
		return;
	}
	if (relid == ext_rels.operation_type)
	{
		optype_cache_used = 0;
		enqueue_inval_count++;
		return;
	}
	for (i = 0; i < job_insert.nindexes; i++)
	{
		if (relid == job_insert.index_oids[i])
		{
			forget_enqueue_caches();
			return;
		}
	}
}

static void
enqueue_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	forget_enqueue_caches();
}

static void
register_cache_callbacks(void)
{
	static bool registered = false;

	if (registered)
		return;
	CacheRegisterRelcacheCallback(enqueue_relcache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, enqueue_namespace_callback,
								  (Datum) 0);
	registered = true;
}

/*----
 * asyncjobs._operation_type_changed(): statement trigger of
 * asyncjobs.operation_type.  Sends a relcache invalidation of the table,
 * so that every backend forgets the operation types it cached (see
 * optype_cache): a plain UPDATE sends none by itself.
 */
PG_FUNCTION_INFO_V1(asyncjobs_operation_type_changed);

Datum
asyncjobs_operation_type_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "asyncjobs._operation_type_changed() must be called as a trigger");
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

/* the columns enqueue's SQL INSERTs write */
#define INSERT_JOB \
	"INSERT INTO asyncjobs.job (name, operationtype, messagename, " \
	" statecode, statuscode, ownerid, postponeuntil, runafter, " \
	" maxretries, data, priority, depth, correlationid, " \
	" regardingobjectid, parentid, dependencytoken, dedupekey, " \
	" recurrencepattern, recurrencestarttime) "

/*
 * Prepares the statements of the SQL side of enqueue, once per backend.
 * Runs connected to SPI, as the extension's owner.
 */
static SPIPlanPtr parent_plan = NULL;
static SPIPlanPtr dedupe_plan = NULL;
static SPIPlanPtr recurrence_plan = NULL;
static SPIPlanPtr insert_many_plan = NULL;

static void
prepare_enqueue_plans(void)
{
	Oid			t1[1] = {TEXTOID};
	Oid			t2[2] = {TEXTOID, TEXTOID};
	Oid			t8[1] = {INT8OID};
	Oid			t15[15] = {TEXTOID, INT4OID, TEXTOID, OIDOID, TIMESTAMPTZOID,
		INT4OID, JSONBOID, INT4OID, TEXTOID, INT4OID, UUIDOID, INT8OID,
	TEXTOID, TEXTOID, TEXTOID};
	Oid			t15m[15] = {TEXTOID, INT4OID, TEXTOID, OIDOID, TIMESTAMPTZOID,
		INT4OID, JSONBARRAYOID, INT4OID, TEXTOID, INT4OID, UUIDOID, INT8OID,
	TEXTOID, TEXTOID, TEXTOID};

	if (type_plan != NULL)
		return;

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
	 * Waiting); a key already held by an active job makes nothing.  Jobs
	 * without either are inserted by insert_jobs_direct() as this statement
	 * would insert them: keep the two alike.
	 */
	insert_plan = prepare_kept(
							   INSERT_JOB
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

	/*
	 * One statement for all: jobs 2..n of a dependency token wait behind
	 * the first; ids follow the order of the data.
	 */
	insert_many_plan = prepare_kept(
									INSERT_JOB
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
									15, t15m);
}

/* check_functions_in_node() callback: a function not built into the server */
static bool
is_user_function(Oid func_id, void *context)
{
	return func_id >= FirstNormalObjectId;
}

/*
 * Whether evaluating an expression may run code not built into the server:
 * a user-defined function, operator or cast, or the checks of a domain.
 */
static bool
runs_user_code(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, CoerceToDomain) ||
		check_functions_in_node(node, is_user_function, context))
		return true;
	return expression_tree_walker(node, runs_user_code, context);
}

/* Whether an index compares keys with functions built into the server */
static bool
builtin_index_support(Relation irel)
{
	int			nprocs = IndexRelationGetNumberOfKeyAttributes(irel) *
		irel->rd_indam->amsupport;
	int			i;

	for (i = 0; i < nprocs; i++)
	{
		if (irel->rd_support[i] >= FirstNormalObjectId)
			return false;
	}
	return true;
}

/*
 * Whether the trigger that invalidates the cached operation types on every
 * write to asyncjobs.operation_type is in place and fires in every session
 * (ENABLE ALWAYS).  Without it, nothing is cached.
 */
static bool
optype_trigger_on(Relation rel)
{
	TriggerDesc *td = rel->trigdesc;
	int			i;

	for (i = 0; td != NULL && i < td->numtriggers; i++)
	{
		Trigger    *t = &td->triggers[i];
		int16		events = TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE |
			TRIGGER_TYPE_DELETE;

		if (strcmp(t->tgname, "operation_type_changed") == 0 &&
			t->tgenabled == TRIGGER_FIRES_ALWAYS &&
			(t->tgtype & events) == events)
			return true;
	}
	return false;
}

/*
 * Looks an operation type up with the SQL statement.
 */
static bool
fetch_operation_spi(text *operation, OpType *type)
{
	OwnerSwitch sw;
	int			rc;
	bool		isnull;
	bool		found = false;
	Datum		arg = PointerGetDatum(operation);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_extension_owner(&sw);
	prepare_enqueue_plans();
	rc = SPI_execute_plan(type_plan, &arg, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		found = true;
		type->optype = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		type->handler = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		if (isnull)
			type->handler = InvalidOid;
		type->max_retries = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		type->priority = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	}
	restore_user(&sw);
	SPI_finish();
	return found;
}

/*
 * Looks an operation type up with a scan of the table's primary key, as
 * the SQL statement would: as the extension's owner, with the snapshot an
 * SPI statement takes.  Sets *done to false, having looked nothing up,
 * when the table is not as expected (the owner may not read it, forced
 * row-level security, another primary key): the SQL statement then runs
 * and reports what is wrong.  Sets *cacheable when what it found may be
 * kept (see optype_cache).
 */
static bool
fetch_operation_direct(text *operation, OpType *type, bool *done,
					   bool *cacheable)
{
	static const struct
	{
		const char *name;
		Oid			type;
	}			cols[5] =
	{
		{"name", TEXTOID}, {"operationtype", INT4OID},
		{"handler", REGPROCEDUREOID}, {"max_retries", INT4OID},
		{"priority", INT4OID}
	};
	AttrNumber	att[5] = {0};
	Relation	rel;
	Relation	irel;
	TupleDesc	desc;
	Oid			pkey;
	ScanKeyData key;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	bool		found = false;
	bool		ok;
	int			a;
	int			c;

	*done = false;
	*cacheable = false;
	if (!OidIsValid(ext_rels.operation_type))
		return false;
	rel = try_table_open(ext_rels.operation_type, AccessShareLock);
	if (rel == NULL)
		return false;
	desc = RelationGetDescr(rel);
	ok = rel->rd_rel->relkind == RELKIND_RELATION &&
		!(rel->rd_rel->relrowsecurity && rel->rd_rel->relforcerowsecurity) &&
		pg_class_aclcheck(RelationGetRelid(rel), ext_rels.owner,
						  ACL_SELECT) == ACLCHECK_OK;
	for (a = 0; ok && a < desc->natts; a++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, a);

		if (attr->attisdropped)
			continue;
		for (c = 0; c < (int) lengthof(cols); c++)
		{
			if (strcmp(NameStr(attr->attname), cols[c].name) == 0)
			{
				ok = (attr->atttypid == cols[c].type);
				att[c] = attr->attnum;
			}
		}
	}
	for (c = 0; ok && c < (int) lengthof(cols); c++)
		ok = AttributeNumberIsValid(att[c]);
	pkey = ok ? RelationGetPrimaryKeyIndex(rel) : InvalidOid;
	if (!OidIsValid(pkey))
	{
		table_close(rel, NoLock);
		return false;
	}
	irel = index_open(pkey, AccessShareLock);
	if (irel->rd_rel->relam != BTREE_AM_OID ||
		irel->rd_index->indnkeyatts != 1 ||
		irel->rd_index->indkey.values[0] != att[0] ||
		!builtin_index_support(irel))
	{
		index_close(irel, NoLock);
		table_close(rel, NoLock);
		return false;
	}

	/* the snapshot of a new SPI statement: it sees our earlier commands */
	PushCopiedSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();

	ScanKeyEntryInitialize(&key, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   irel->rd_indcollation[0], F_TEXTEQ,
						   PointerGetDatum(operation));
	scan = index_beginscan(rel, irel, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	slot = table_slot_create(rel, NULL);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		d;

		found = true;
		type->optype = DatumGetInt32(slot_getattr(slot, att[1], &isnull));
		d = slot_getattr(slot, att[2], &isnull);
		type->handler = isnull ? InvalidOid : DatumGetObjectId(d);
		type->max_retries = DatumGetInt32(slot_getattr(slot, att[3], &isnull));
		type->priority = DatumGetInt32(slot_getattr(slot, att[4], &isnull));
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	PopActiveSnapshot();

	*cacheable = optype_trigger_on(rel);

	/* locks are kept to the end of the transaction, as a query keeps them */
	index_close(irel, NoLock);
	table_close(rel, NoLock);
	*done = true;
	return found;
}

/*
 * The type of an operation; an error if it is not registered.
 */
static void
lookup_operation(text *operation, OpType *type)
{
	const char *name = VARDATA_ANY(operation);
	int			len = VARSIZE_ANY_EXHDR(operation);
	bool		found;
	bool		done;
	bool		cacheable;
	uint64		seen;
	LocalTransactionId scope;
	int			i;

	register_cache_callbacks();

	/* what other sessions committed */
	AcceptInvalidationMessages();
	scope = IsolationUsesXactSnapshot() ? MyProc->lxid : InvalidLocalTransactionId;
	for (i = 0; i < optype_cache_used; i++)
	{
		OpTypeEntry *e = &optype_cache[i];

		if (e->lxid == scope && e->len == len &&
			memcmp(e->name, name, len) == 0)
		{
			*type = e->type;
			return;
		}
	}

	/*
	 * As an SPI statement would, make our earlier commands visible; this
	 * also processes the invalidations they sent (our own writes to
	 * asyncjobs.operation_type).
	 */
	CommandCounterIncrement();
	if (!ext_rels.valid)
		load_extension_rels();
	seen = enqueue_inval_count;
	found = fetch_operation_direct(operation, type, &done, &cacheable);
	if (!done)
		found = fetch_operation_spi(operation, type);
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("operation \"%s\" is not registered",
						text_to_cstring(operation)),
				 errhint("Register it with asyncjobs.register_operation(), or use asyncjobs.enqueue_sql() to run SQL.")));

	/* keep it, unless the table changed meanwhile */
	if (cacheable && len < NAMEDATALEN && seen == enqueue_inval_count)
	{
		OpTypeEntry *e = NULL;

		/* the place of an entry of an earlier transaction, or a new one */
		for (i = 0; i < optype_cache_used && e == NULL; i++)
		{
			if (optype_cache[i].lxid != InvalidLocalTransactionId &&
				optype_cache[i].lxid != MyProc->lxid)
				e = &optype_cache[i];
		}
		if (e == NULL && optype_cache_used < OPTYPE_CACHE_SIZE)
			e = &optype_cache[optype_cache_used++];
		if (e == NULL)
		{
			e = &optype_cache[optype_cache_next];
			optype_cache_next = (optype_cache_next + 1) % OPTYPE_CACHE_SIZE;
		}
		e->lxid = scope;
		e->len = len;
		memcpy(e->name, name, len);
		e->type = *type;
	}
}

/*
 * A function's name as format_procedure() gives it with the search_path
 * of the extension's queries (pg_catalog, pg_temp): qualified unless it is
 * in pg_catalog.  The enqueue path does not pin search_path, and an error
 * message must not depend on the caller's.
 */
static char *
pinned_procedure_name(Oid proc)
{
	int			nestlevel = NewGUCNestLevel();
	char	   *result;

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	result = format_procedure(proc);
	AtEOXact_GUC(true, nestlevel);
	return result;
}

/*
 * Builds job_insert from the relcache entry of asyncjobs.job.  Leaves
 * job_insert.direct false when the direct insert may not be used.
 */
static void
build_job_insert_info(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext oldcxt;
	List	   *indexes;
	ListCell   *lc;
	int			a;
	int			c;
	int			i;
	uint64		seen = enqueue_inval_count;

	Assert(!job_insert.busy);
	if (job_insert.cxt != NULL)
		MemoryContextDelete(job_insert.cxt);
	memset(&job_insert, 0, sizeof(job_insert));
	job_insert.cxt = AllocSetContextCreate(CacheMemoryContext,
										   "asyncjobs enqueue",
										   ALLOCSET_SMALL_SIZES);
	job_insert.relid = RelationGetRelid(rel);

	/* what the executor would do more for than insert the row */
	if (rel->rd_rel->relkind != RELKIND_RELATION ||
		rel->trigdesc != NULL ||
		rel->rd_rules != NULL ||
		(rel->rd_rel->relrowsecurity && rel->rd_rel->relforcerowsecurity) ||
		(desc->constr != NULL &&
		 (desc->constr->has_generated_stored || desc->constr->num_check > 0)))
		goto done;

	for (a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, a);

		if (attr->attisdropped)
			continue;
		/* a domain or a type of an extension: its code is not ours to run */
		if (attr->atttypid >= FirstNormalObjectId)
			goto done;
		for (c = 0; c < JC_COUNT; c++)
		{
			if (strcmp(NameStr(attr->attname), job_columns[c].name) != 0)
				continue;
			if (attr->atttypid != job_columns[c].type || attr->atttypmod != -1)
				goto done;
			job_insert.attno[c] = attr->attnum;
		}
	}
	for (c = 0; c < JC_COUNT; c++)
	{
		if (!AttributeNumberIsValid(job_insert.attno[c]))
			goto done;
	}

	oldcxt = MemoryContextSwitchTo(job_insert.cxt);

	/* the defaults of the other columns, as the rewriter adds them */
	job_insert.natts = desc->natts;
	job_insert.defaults = palloc0(sizeof(ExprState *) * desc->natts);
	for (a = 0; a < desc->natts; a++)
	{
		Node	   *expr;

		if (TupleDescAttr(desc, a)->attisdropped)
			continue;
		for (c = 0; c < JC_NSET; c++)
		{
			if (job_insert.attno[c] == a + 1)
				break;
		}
		if (c < JC_NSET)
			continue;
		expr = build_column_default(rel, a + 1);
		if (expr == NULL)
			continue;
		if (runs_user_code(expr, NULL))
		{
			MemoryContextSwitchTo(oldcxt);
			goto done;
		}
		job_insert.defaults[a] = ExecInitExpr(expression_planner((Expr *) expr),
											  NULL);
	}

	/*
	 * The indexes, with their expressions and predicates compiled as
	 * FormIndexDatum() and ExecInsertIndexTuples() would compile them for
	 * each statement.
	 */
	indexes = RelationGetIndexList(rel);
	job_insert.index_oids = palloc(sizeof(Oid) * Max(list_length(indexes), 1));
	job_insert.index_info = palloc0(sizeof(IndexInfo *) * Max(list_length(indexes), 1));
	i = 0;
	foreach(lc, indexes)
		job_insert.index_oids[i++] = lfirst_oid(lc);
	job_insert.nindexes = i;
	for (i = 0; i < job_insert.nindexes; i++)
	{
		Relation	irel = index_open(job_insert.index_oids[i], RowExclusiveLock);
		IndexInfo  *ii = BuildIndexInfo(irel);
		bool		plain = (irel->rd_rel->relam == BTREE_AM_OID &&
							 ii->ii_ExclusionOps == NULL &&
							 builtin_index_support(irel) &&
							 !runs_user_code((Node *) ii->ii_Expressions, NULL) &&
							 !runs_user_code((Node *) ii->ii_Predicate, NULL));

		index_close(irel, NoLock);
		if (!plain)
		{
			MemoryContextSwitchTo(oldcxt);
			goto done;
		}
		if (ii->ii_Expressions != NIL)
		{
			foreach(lc, ii->ii_Expressions)
				ii->ii_ExpressionsState =
					lappend(ii->ii_ExpressionsState,
							ExecInitExpr(expression_planner((Expr *) lfirst(lc)), NULL));
		}
		if (ii->ii_Predicate != NIL)
			ii->ii_PredicateState =
				ExecInitQual((List *) expression_planner((Expr *) ii->ii_Predicate),
							 NULL);
		job_insert.index_info[i] = ii;
	}
	MemoryContextSwitchTo(oldcxt);
	job_insert.direct = true;

done:
	/* built from what it read, unless an invalidation came meanwhile */
	job_insert.valid = (seen == enqueue_inval_count);
}

/*
 * A version 4 UUID for a job's correlationid, as gen_random_uuid() makes
 * it.  The random bytes come from pg_strong_random() for 64 UUIDs at a
 * time: with OpenSSL a call costs about a microsecond whatever its size,
 * a tenth of the time of each job of enqueue_many() when made per job.
 * A correlationid only ties a chain of jobs together for loop protection;
 * it is no secret and grants nothing.
 */
#define UUID_POOL_SIZE	64

static Datum
random_uuid(void)
{
	static uint8 pool[UUID_POOL_SIZE * UUID_LEN];
	static int	pool_left = 0;
	pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));

	if (pool_left == 0)
	{
		if (!pg_strong_random(pool, sizeof(pool)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values")));
		pool_left = UUID_POOL_SIZE;
	}
	pool_left--;
	memcpy(uuid->data, pool + pool_left * UUID_LEN, UUID_LEN);
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;	/* version 4 */
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
	return UUIDPGetDatum(uuid);
}

/* rows buffered for one table_multi_insert(), as COPY FROM buffers them */
#define MULTI_INSERT_ROWS	64
#define MULTI_INSERT_BYTES	65536

/*
 * Inserts one job per data value into asyncjobs.job, with the columns of
 * set[] (JC_DATA and, when random_correlation, JC_CORRELATIONID set per
 * job), and stores their ids in ids[].  Returns false, having done
 * nothing, when the direct insert may not be used (see above): the caller
 * then runs the INSERT statement.
 */
static bool
insert_jobs_direct(Datum *set, bool *setnull, bool random_correlation,
				   Jsonb **datas, int n, int64 *ids)
{
	Relation	rel;
	Relation   *irels;
	Oid			owner;
	Oid			save_userid;
	int			save_sec_context;
	int			i;

	/*
	 * Not while a direct insert runs: it runs no user code that could
	 * enqueue (see above), but should that ever change, the nested call
	 * must not rebuild job_insert under its caller.
	 */
	if (job_insert.busy)
		return false;

	(void) extension_owner();	/* ext_rels loaded */
	rel = try_table_open(ext_rels.job, RowExclusiveLock);
	if (rel == NULL)
		return false;
	for (;;)
	{
		if (!job_insert.valid || job_insert.relid != RelationGetRelid(rel))
		{
			build_job_insert_info(rel);
			continue;
		}
		if (!job_insert.direct)
		{
			table_close(rel, NoLock);
			return false;
		}
		irels = palloc(sizeof(Relation) * Max(job_insert.nindexes, 1));
		for (i = 0; i < job_insert.nindexes; i++)
			irels[i] = index_open(job_insert.index_oids[i], RowExclusiveLock);
		/* opening them may have processed an invalidation */
		if (job_insert.valid)
			break;
		for (i = 0; i < job_insert.nindexes; i++)
			index_close(irels[i], NoLock);
		pfree(irels);
	}

	/* as of the invalidations processed when the table was locked */
	owner = extension_owner();

	/* what ExecCheckXactReadOnly() refuses, with its words */
	PreventCommandIfReadOnly("INSERT");
	PreventCommandIfParallelMode("INSERT");

	/*
	 * What ExecCheckRTPerms() checks of the owner (INSERT, and SELECT for
	 * RETURNING): when it lacks them, the INSERT statement reports it.
	 */
	if (pg_class_aclcheck(RelationGetRelid(rel), owner, ACL_INSERT) != ACLCHECK_OK ||
		pg_class_aclcheck(RelationGetRelid(rel), owner, ACL_SELECT) != ACLCHECK_OK)
	{
		for (i = 0; i < job_insert.nindexes; i++)
			index_close(irels[i], NoLock);
		table_close(rel, NoLock);
		return false;
	}

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	job_insert.busy = true;
	PG_TRY();
	{
		EState	   *estate = CreateExecutorState();
		ExprContext *econtext = GetPerTupleExprContext(estate);
		ResultRelInfo *rri = makeNode(ResultRelInfo);
		CommandId	cid = GetCurrentCommandId(true);
		int			natts = job_insert.natts;
		AttrNumber *attno = job_insert.attno;
		int			nslots = Min(n, MULTI_INSERT_ROWS);
		TupleTableSlot **slots = palloc(sizeof(TupleTableSlot *) * nslots);
		int			used = 0;
		Size		bytes = 0;
		int			k;

		InitResultRelInfo(rri, rel, 0, NULL, 0);
		rri->ri_NumIndices = job_insert.nindexes;
		rri->ri_IndexRelationDescs = irels;
		rri->ri_IndexRelationInfo = job_insert.index_info;
		for (k = 0; k < nslots; k++)
			slots[k] = table_slot_create(rel, NULL);

		for (i = 0; i < n; i++)
		{
			TupleTableSlot *slot = slots[used];
			Datum	   *values = slot->tts_values;
			bool	   *nulls = slot->tts_isnull;
			MemoryContext oldcxt;
			int			a;
			int			c;

			/* the row: the table's defaults, then the columns enqueue sets */
			oldcxt = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));
			for (a = 0; a < natts; a++)
			{
				if (job_insert.defaults[a] != NULL)
					values[a] = ExecEvalExpr(job_insert.defaults[a], econtext,
											 &nulls[a]);
				else
				{
					values[a] = (Datum) 0;
					nulls[a] = true;
				}
			}
			for (c = 0; c < JC_NSET; c++)
			{
				values[attno[c] - 1] = set[c];
				nulls[attno[c] - 1] = setnull[c];
			}
			values[attno[JC_DATA] - 1] = JsonbPGetDatum(datas[i]);
			nulls[attno[JC_DATA] - 1] = false;
			if (random_correlation)
			{
				values[attno[JC_CORRELATIONID] - 1] = random_uuid();
				nulls[attno[JC_CORRELATIONID] - 1] = false;
			}
			MemoryContextSwitchTo(oldcxt);
			ExecStoreVirtualTuple(slot);

			if (rel->rd_att->constr != NULL)
				ExecConstraints(rri, slot, estate);
			/* after the NOT NULL check of asyncoperationid */
			ids[i] = DatumGetInt64(values[attno[JC_ID] - 1]);

			/* the row outlives the per-row memory, as COPY keeps it */
			ExecMaterializeSlot(slot);
			ResetPerTupleExprContext(estate);
			used++;
			bytes += VARSIZE_ANY(datas[i]);
			if (used < nslots && bytes < MULTI_INSERT_BYTES && i < n - 1)
				continue;

			/*
			 * Into the heap, several rows at once as COPY does (one WAL
			 * record per page), then into the indexes row by row.
			 */
			if (used == 1)
				table_tuple_insert(rel, slots[0], cid, 0, NULL);
			else
				table_multi_insert(rel, slots, used, cid, 0, NULL);
			for (k = 0; k < used; k++)
			{
				list_free(ExecInsertIndexTuples(rri, slots[k], estate, false,
												false, NULL, NIL));
				ResetPerTupleExprContext(estate);
				ExecClearTuple(slots[k]);
			}
			used = 0;
			bytes = 0;
		}

		for (k = 0; k < nslots; k++)
			ExecDropSingleTupleTableSlot(slots[k]);
		FreeExecutorState(estate);
	}
	PG_FINALLY();
	{
		job_insert.busy = false;
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec_context);

	for (i = 0; i < job_insert.nindexes; i++)
		index_close(irels[i], NoLock);
	pfree(irels);
	table_close(rel, NoLock);
	return true;
}

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
	OpType		type;
	int32		max_retries;
	Datum		args[15];
	char		nulls[15];
	int64		id = 0;
	int32		depth = 1;
	bool		have_correlation = false;
	Datum		correlation = (Datum) 0;
	int			tries;
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

	lookup_operation(operation, &type);

	if (OidIsValid(type.handler) &&
		pg_proc_aclcheck(type.handler, caller, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", pinned_procedure_name(type.handler)),
				 errdetail("Jobs of operation \"%s\" run this handler as the role that enqueues them.",
						   text_to_cstring(operation)),
				 errhint("Ask the function's owner to GRANT EXECUTE on it.")));

	for (i = 0; i < n && type.optype == AJ_OPTYPE_SQL; i++)
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

	max_retries = PG_ARGISNULL(7) ? type.max_retries : PG_GETARG_INT32(7);

	if (!PG_ARGISNULL(8) || asyncjobs_current_job_id != 0)
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		become_extension_owner(&sw);
		prepare_enqueue_plans();

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

				/* in the caller's context: it outlives this SPI connection */
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

		restore_user(&sw);
		SPI_finish();
	}

	/* no dedupe key, no dependency token: the direct insert */
	if (PG_ARGISNULL(5) && PG_ARGISNULL(6))
	{
		Datum		set[JC_NSET];
		bool		setnull[JC_NSET];
		TimestampTz now = GetCurrentTransactionStartTimestamp();
		bool		postponed;

		memset(setnull, false, sizeof(setnull));
		/* the columns of insert_plan, as it computes them */
		set[JC_NAME] = PG_ARGISNULL(2) ? PointerGetDatum(operation) : PG_GETARG_DATUM(2);
		set[JC_OPERATIONTYPE] = Int32GetDatum(type.optype);
		set[JC_MESSAGENAME] = PointerGetDatum(operation);
		postponed = !PG_ARGISNULL(4) &&
			timestamp_cmp_internal(PG_GETARG_TIMESTAMPTZ(4), now) > 0;
		set[JC_STATECODE] = Int16GetDatum(postponed ? AJ_STATE_SUSPENDED : AJ_STATE_READY);
		set[JC_STATUSCODE] = Int16GetDatum(postponed ? AJ_STATUS_WAITING :
										   AJ_STATUS_WAITING_FOR_RESOURCES);
		set[JC_OWNERID] = ObjectIdGetDatum(caller);
		set[JC_POSTPONEUNTIL] = PG_ARGISNULL(4) ? (Datum) 0 : PG_GETARG_DATUM(4);
		setnull[JC_POSTPONEUNTIL] = PG_ARGISNULL(4);
		set[JC_RUNAFTER] = PG_ARGISNULL(4) ? TimestampTzGetDatum(now) : PG_GETARG_DATUM(4);
		set[JC_MAXRETRIES] = Int32GetDatum(max_retries);
		set[JC_DATA] = (Datum) 0;	/* per job */
		set[JC_PRIORITY] = Int32GetDatum(PG_ARGISNULL(3) ? type.priority : PG_GETARG_INT32(3));
		set[JC_DEPTH] = Int32GetDatum(depth);
		set[JC_CORRELATIONID] = correlation;	/* or per job */
		setnull[JC_CORRELATIONID] = !have_correlation;
		set[JC_REGARDING] = PG_ARGISNULL(9) ? (Datum) 0 : PG_GETARG_DATUM(9);
		setnull[JC_REGARDING] = PG_ARGISNULL(9);
		set[JC_PARENTID] = Int64GetDatum(asyncjobs_current_job_id);
		setnull[JC_PARENTID] = (asyncjobs_current_job_id == 0);
		set[JC_DEPENDENCYTOKEN] = (Datum) 0;
		setnull[JC_DEPENDENCYTOKEN] = true;
		set[JC_DEDUPEKEY] = (Datum) 0;
		setnull[JC_DEDUPEKEY] = true;
		set[JC_RECURRENCEPATTERN] = PG_ARGISNULL(8) ? (Datum) 0 : PG_GETARG_DATUM(8);
		setnull[JC_RECURRENCEPATTERN] = PG_ARGISNULL(8);
		set[JC_RECURRENCESTART] = set[JC_RUNAFTER];
		setnull[JC_RECURRENCESTART] = PG_ARGISNULL(8);

		if (insert_jobs_direct(set, setnull, !have_correlation, datas, n, ids))
		{
			asyncjobs_enqueued_at_commit(DatumGetInt32(set[JC_PRIORITY]),
										 DatumGetTimestampTz(set[JC_RUNAFTER]));
			return;
		}
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_extension_owner(&sw);
	prepare_enqueue_plans();

	memset(nulls, ' ', sizeof(nulls));
	if (PG_ARGISNULL(2))
	{
		args[0] = (Datum) 0;
		nulls[0] = 'n';
	}
	else
		args[0] = PG_GETARG_DATUM(2);
	args[1] = Int32GetDatum(type.optype);
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
	args[7] = Int32GetDatum(PG_ARGISNULL(3) ? type.priority : PG_GETARG_INT32(3));
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
		enqueued_at_commit(args, nulls);
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

	enqueued_at_commit(args, nulls);
	ids[0] = id;
}

/*
 * After the SQL side of enqueue inserted jobs: their priority ($8) and due
 * time (runafter: $5, else now()), for the wake-up at commit.
 */
static void
enqueued_at_commit(Datum *args, const char *nulls)
{
	asyncjobs_enqueued_at_commit(DatumGetInt32(args[7]),
								 nulls[4] == 'n' ? GetCurrentTransactionStartTimestamp() :
								 DatumGetTimestampTz(args[4]));
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

	static Jsonb *empty_object = NULL;

	asyncjobs_require_shmem();
	require_not_null(fcinfo, 0, "operation");
	if (PG_ARGISNULL(1))
	{
		/* parsed once: '{}' is the data of most jobs without data */
		if (empty_object == NULL)
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

			empty_object = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															  CStringGetDatum("{}")));
			MemoryContextSwitchTo(oldcxt);
		}
		data = empty_object;
	}
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
		/*
		 * called by a job: one that ran before it in its batch is done (it
		 * looks InProgress, or waiting in a fused batch, until the batch
		 * commits)
		 */
		if (asyncjobs_current_job_id != 0)
		{
			int			deferred = asyncjobs_deferred_status(job);

			if (deferred >= 0)
			{
				status = deferred;
				break;
			}
		}
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
