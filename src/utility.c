/*-------------------------------------------------------------------------
 *
 * utility.c
 *	  Keeps asyncjobs workers out of the way of commands that need a
 *	  database to themselves: DROP DATABASE, ALTER DATABASE ... RENAME,
 *	  ALTER DATABASE ... SET TABLESPACE, and CREATE DATABASE ... TEMPLATE.
 *
 * These commands fail while other sessions are connected to the database,
 * and our workers are always connected.  Before such a command runs, the
 * backend marks the database quiesced (the launcher starts no worker for
 * it), stops its workers and waits for them to leave; afterwards it lifts
 * the mark.  Jobs the workers held are requeued when workers return.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "tcop/utility.h"

#include "asyncjobs.h"

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static void asyncjobs_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
									 bool readOnlyTree,
									 ProcessUtilityContext context,
									 ParamListInfo params,
									 QueryEnvironment *queryEnv,
									 DestReceiver *dest, QueryCompletion *qc);

void
asyncjobs_utility_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = asyncjobs_ProcessUtility;
}

/*
 * The database a statement needs to itself, or NULL.
 */
static const char *
exclusive_database(Node *parsetree)
{
	ListCell   *lc;

	switch (nodeTag(parsetree))
	{
		case T_DropdbStmt:
			return ((DropdbStmt *) parsetree)->dbname;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				return ((RenameStmt *) parsetree)->subname;
			return NULL;
		case T_AlterDatabaseStmt:
			foreach(lc, ((AlterDatabaseStmt *) parsetree)->options)
			{
				DefElem    *opt = lfirst_node(DefElem, lc);

				if (strcmp(opt->defname, "tablespace") == 0)
					return ((AlterDatabaseStmt *) parsetree)->dbname;
			}
			return NULL;
		case T_CreatedbStmt:
			foreach(lc, ((CreatedbStmt *) parsetree)->options)
			{
				DefElem    *opt = lfirst_node(DefElem, lc);

				if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
					return defGetString(opt);
			}
			return NULL;
		default:
			return NULL;
	}
}

/*
 * Stops the workers of a database and waits (up to 10 seconds) for them to
 * be gone.
 */
static void
stop_database_workers(Oid dboid)
{
	int			i;
	int			tries;

	asyncjobs_quiesce_database(dboid, true);

	for (tries = 0; tries < 1000; tries++)
	{
		bool		busy = false;

		LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
		for (i = 0; i < AsyncJobs->n_slots; i++)
		{
			AsyncJobsSlot *slot = &AsyncJobs->slots[i];

			if (slot->dboid != dboid || slot->state == SLOT_FREE ||
				slot->state == SLOT_EXITED)
				continue;
			busy = true;
			if (slot->pid != 0)
			{
				slot->exit_reason = EXIT_SHUTDOWN;
				(void) kill(slot->pid, SIGTERM);
			}
		}
		LWLockRelease(AsyncJobs->lock);
		if (!busy)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

static void
asyncjobs_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	const char *dbname = AsyncJobs ? exclusive_database(pstmt->utilityStmt) : NULL;
	Oid			dboid = dbname ? get_database_oid(dbname, true) : InvalidOid;

	if (OidIsValid(dboid) && dboid != MyDatabaseId)
	{
		stop_database_workers(dboid);
		PG_TRY();
		{
			if (prev_ProcessUtility)
				prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
			else
				standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
										params, queryEnv, dest, qc);
		}
		PG_FINALLY();
		{
			asyncjobs_quiesce_database(dboid, false);
		}
		PG_END_TRY();
		/* the launcher rereads pg_database: the database may be gone */
		asyncjobs_notify_launcher_at_commit();
		return;
	}

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}
