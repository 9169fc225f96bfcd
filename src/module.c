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
#include "utils/guc.h"

#include "asyncjobs.h"

PG_MODULE_MAGIC;

/*---- GUC variables ----*/
int			asyncjobs_max_workers = 2;
int			asyncjobs_poll_interval = 1000;
int			asyncjobs_batch_size = 10;
bool		asyncjobs_enabled = true;
int			asyncjobs_launcher_naptime = 10000;
int			asyncjobs_max_depth = 8;


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
							"Jobs a worker claims at once.",
							NULL,
							&asyncjobs_batch_size,
							10, 1, 1000,
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

	MarkGUCPrefixReserved("asyncjobs");

	asyncjobs_shmem_request();
	asyncjobs_utility_init();
	asyncjobs_register_launcher();
}
