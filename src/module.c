/*-------------------------------------------------------------------------
 *
 * module.c
 *	  Entry point of the asyncjobs library: settings, shared memory and
 *	  hooks, and the launcher's registration.
 *
 * The library must be listed in shared_preload_libraries: it registers a
 * background worker and reserves shared memory, which is only possible
 * while the postmaster starts.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "asyncjobs.h"

PG_MODULE_MAGIC;

/*---- GUC variables ----*/
int			asyncjobs_max_workers = 2;
int			asyncjobs_poll_interval = 1000;
int			asyncjobs_batch_size = 500;
int			asyncjobs_batch_max_age = 50;
int			asyncjobs_claim_watermark_threshold = 10000;
bool		asyncjobs_enabled = true;
bool		asyncjobs_fused_batches = true;
int			asyncjobs_launcher_naptime = 10000;
int			asyncjobs_max_depth = 8;
char	   *asyncjobs_retention_succeeded = NULL;
char	   *asyncjobs_retention_failed = NULL;
char	   *asyncjobs_retention_canceled = NULL;
char	   *asyncjobs_retention_rollups = NULL;
char	   *asyncjobs_retention_trace = NULL;
int			asyncjobs_trace_level = TRACE_LEVEL_EXCEPTION;
int			asyncjobs_max_payload_size = 1024;

static const struct config_enum_entry trace_level_options[] = {
	{"off", TRACE_LEVEL_OFF, false},
	{"exception", TRACE_LEVEL_EXCEPTION, false},
	{"all", TRACE_LEVEL_ALL, false},
	{NULL, 0, false}
};

/*
 * A retention setting must be a positive interval.  Parsed without
 * ereport, as interval_in would, since a check hook must not throw.
 */
static bool
check_retention(char **newval, void **extra, GucSource source)
{
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_itm_in itm_in;
	Interval	iv;

	if (*newval == NULL ||
		ParseDateTime(*newval, workbuf, sizeof(workbuf), field, ftype,
					  MAXDATEFIELDS, &nf) != 0 ||
		DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm_in) != 0 ||
		dtype != DTK_DELTA ||
		itmin2interval(&itm_in, &iv) != 0)
	{
		GUC_check_errdetail("\"%s\" is not an interval.", *newval ? *newval : "");
		return false;
	}
	if (iv.time < 0 || iv.day < 0 || iv.month < 0 ||
		(iv.time == 0 && iv.day == 0 && iv.month == 0))
	{
		GUC_check_errdetail("A retention must be a positive interval.");
		return false;
	}
	return true;
}

static void
define_retention(const char *name, const char *desc, char **var, const char *dflt)
{
	DefineCustomStringVariable(name, desc,
							   "cleanup() removes completed jobs (or trace log rows) older than this.",
							   var, dflt, PGC_SIGHUP, 0,
							   check_retention, NULL, NULL);
}


/*
 * Module load callback
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("asyncjobs.max_workers",
							"Background workers that run jobs, per database.",
							NULL,
							&asyncjobs_max_workers,
							2, 0, 64,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("asyncjobs.poll_interval",
							"Longest time an idle worker sleeps before looking for due jobs.",
							"Workers are woken at once when a job is enqueued; "
							"the poll only catches postponed jobs that fall due "
							"and other missed wake-ups.",
							&asyncjobs_poll_interval,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("asyncjobs.batch_size",
							"Most jobs a worker claims at once, and most jobs whose outcomes it commits together.",
							"Within this bound a worker claims about asyncjobs.batch_max_age of work "
							"at the jobs' recent average run time, and one job at a time while jobs "
							"run longer than 20 ms.",
							&asyncjobs_batch_size,
							500, 1, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("asyncjobs.batch_max_age",
							"Longest time a worker keeps the outcomes of finished jobs before it commits them.",
							"A worker runs the jobs it claimed in one transaction, each in a "
							"subtransaction, and commits after asyncjobs.batch_size jobs or "
							"once the transaction is this old. 0 commits after every job.",
							&asyncjobs_batch_max_age,
							50, 0, 10000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("asyncjobs.fused_batches",
							 "Runs short jobs in the transaction that claims them.",
							 "A worker whose jobs run shorter than 20 ms claims the next ones "
							 "by locking their rows only, runs them and commits their "
							 "outcomes in that one transaction: they are not marked "
							 "InProgress meanwhile, and a job of such a batch that runs "
							 "longer than asyncjobs.batch_max_age (at least 20 ms) is "
							 "stopped, undone and run again on its own. Never while an "
							 "operation with max_concurrency is registered.",
							 &asyncjobs_fused_batches,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("asyncjobs.claim_watermark_threshold",
							"Index entries of gone jobs a claim from the start may read before the workers take turns at such claims.",
							"Claims start each operation's scan after the last job the worker "
							"took of it, and from the start when told that jobs wait before "
							"that and at least every asyncjobs.poll_interval. A claim from the "
							"start that reads more entries of job_claim_idx whose jobs it "
							"cannot see than this plus asyncjobs.max_workers * "
							"asyncjobs.batch_size (as it does while a transaction holds back "
							"the xmin horizon) puts its worker in watermark mode: the workers "
							"of the database take turns, one claim from the start per poll "
							"interval. 0 turns watermarks off: every claim starts from the start.",
							&asyncjobs_claim_watermark_threshold,
							10000, 0, INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("asyncjobs.enabled",
							 "Whether workers pick up jobs.",
							 "When off, no worker starts a job in any database; "
							 "queued jobs wait and nothing is lost.",
							 &asyncjobs_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("asyncjobs.launcher_naptime",
							"How often the launcher rescans the list of databases.",
							"CREATE EXTENSION tells the launcher at once; the "
							"rescan finds databases that got the extension "
							"another way (for example copied from a template).",
							&asyncjobs_launcher_naptime,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("asyncjobs.max_depth",
							"Deepest chain of jobs enqueued by jobs (loop protection).",
							"A job enqueued by a running job gets its parent's depth "
							"plus one; past this depth within an hour the enqueue "
							"fails and the parent job fails for good.",
							&asyncjobs_max_depth,
							8, 1, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	define_retention("asyncjobs.retention_succeeded",
					 "How long Succeeded jobs are kept.",
					 &asyncjobs_retention_succeeded, "30 days");
	define_retention("asyncjobs.retention_failed",
					 "How long Failed jobs are kept.",
					 &asyncjobs_retention_failed, "60 days");
	define_retention("asyncjobs.retention_canceled",
					 "How long Canceled jobs are kept.",
					 &asyncjobs_retention_canceled, "60 days");
	define_retention("asyncjobs.retention_rollups",
					 "How long the monitoring rollups and backlog samples are kept.",
					 &asyncjobs_retention_rollups, "400 days");
	define_retention("asyncjobs.retention_trace",
					 "How long trace log rows are kept.",
					 &asyncjobs_retention_trace, "1 day");

	DefineCustomEnumVariable("asyncjobs.trace_level",
							 "Which jobs keep their asyncjobs.trace() lines in asyncjobs.plugintracelog.",
							 "off: none; exception: jobs whose attempt failed; all: every job.",
							 &asyncjobs_trace_level,
							 TRACE_LEVEL_EXCEPTION,
							 trace_level_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("asyncjobs.max_payload_size",
							"Largest data a job may carry, and largest result an external worker may report.",
							"Measured as the size of the jsonb value, uncompressed; "
							"a larger one is refused with SQLSTATE 54000.",
							&asyncjobs_max_payload_size,
							1024, 1, MAX_KILOBYTES,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	asyncjobs_monitor_init();

	MarkGUCPrefixReserved("asyncjobs");

	asyncjobs_shmem_request();
	asyncjobs_utility_init();
	asyncjobs_register_launcher();
}
