/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The asyncjobs launcher: one background worker per server that keeps
 *	  a pool of asyncjobs.max_workers workers in every database that has
 *	  the extension.
 *
 * The launcher connects to no database; it reads pg_database and, for a
 * database it has not seen, starts one worker as a probe.  The worker
 * checks for the extension and either settles in (the launcher then fills
 * the pool) or exits saying the extension is missing (the launcher probes
 * again later).  CREATE EXTENSION tells the launcher at once through
 * shared memory, so a new database gets its workers without waiting.
 *
 * Workers are registered with bgw_notify_pid, so the postmaster signals
 * the launcher when one starts or stops; a worker that died is replaced at
 * once, and its replacement requeues the jobs it held.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "asyncjobs.h"

#define MAX_POOL		64

typedef enum ExtensionKnown
{
	EXT_UNKNOWN,				/* probe running or to start */
	EXT_PRESENT,
	EXT_ABSENT
} ExtensionKnown;

typedef struct PoolWorker
{
	BackgroundWorkerHandle *handle;
	int			slot;
	bool		terminating;
} PoolWorker;

typedef struct DatabaseEntry
{
	Oid			dboid;			/* hash key */
	char		datname[NAMEDATALEN];
	bool		seen;			/* still in pg_database at the last scan */
	ExtensionKnown ext;
	TimestampTz next_probe;		/* when EXT_ABSENT: probe again after this */
	TimestampTz hold_until;		/* after repeated deaths: start nothing before */
	int			deaths;			/* unexpected deaths in the current window */
	TimestampTz deaths_since;
	bool		warned_no_slot;
	int			n_workers;
	PoolWorker	workers[MAX_POOL];
} DatabaseEntry;

static HTAB *databases = NULL;
static bool rescan_needed = false;
static MemoryContext launcher_context = NULL;

static void launcher_detach(int code, Datum arg);
static void launcher_adopt_orphans(void);
static void launcher_scan_databases(void);
static void launcher_collect_pending(void);
static void launcher_reap(DatabaseEntry *entry, TimestampTz now);
static void launcher_balance(DatabaseEntry *entry, TimestampTz now,
							 long *next_wait);
static bool launcher_start_worker(DatabaseEntry *entry);
static void slot_free(int slot);

void
asyncjobs_register_launcher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 1;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "asyncjobs");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "asyncjobs_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "asyncjobs launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "asyncjobs launcher");
	bgw.bgw_main_arg = (Datum) 0;
	bgw.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&bgw);
}

void
asyncjobs_launcher_main(Datum main_arg)
{
	HASHCTL		ctl;
	TimestampTz next_scan = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	/* shared catalogs only: enough to read pg_database */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("asyncjobs launcher");

	launcher_context = AllocSetContextCreate(TopMemoryContext,
											 "asyncjobs launcher",
											 ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(DatabaseEntry);
	ctl.hcxt = launcher_context;
	databases = hash_create("asyncjobs databases", 64, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	launcher_adopt_orphans();

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	AsyncJobs->launcher_pid = MyProcPid;
	AsyncJobs->launcher_latch = MyLatch;
	LWLockRelease(AsyncJobs->lock);
	before_shmem_exit(launcher_detach, (Datum) 0);

	ereport(LOG, (errmsg("asyncjobs launcher started")));

	while (!ShutdownRequestPending)
	{
		TimestampTz now;
		long		wait_ms;
		HASH_SEQ_STATUS seq;
		DatabaseEntry *entry;

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		now = GetCurrentTimestamp();
		if (now >= next_scan || rescan_needed)
		{
			rescan_needed = false;
			launcher_scan_databases();
			next_scan = TimestampTzPlusMilliseconds(now, asyncjobs_launcher_naptime);
		}
		launcher_collect_pending();

		wait_ms = TimestampDifferenceMilliseconds(now, next_scan);
		hash_seq_init(&seq, databases);
		while ((entry = hash_seq_search(&seq)) != NULL)
		{
			launcher_reap(entry, now);
			launcher_balance(entry, now, &wait_ms);
		}

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	proc_exit(0);
}

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	if (AsyncJobs->launcher_pid == MyProcPid)
	{
		AsyncJobs->launcher_pid = 0;
		AsyncJobs->launcher_latch = NULL;
	}
	LWLockRelease(AsyncJobs->lock);
}

/*
 * A launcher that starts while workers of an earlier launcher still run
 * (the earlier one exited with an error) has no handles for them: stop
 * them, and let the new pool take over.  Their jobs are requeued by the
 * new workers.
 */
static void
launcher_adopt_orphans(void)
{
	int			i;
	int			waited;

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	for (i = 0; i < AsyncJobs->n_slots; i++)
	{
		AsyncJobsSlot *slot = &AsyncJobs->slots[i];

		if (slot->state != SLOT_FREE && slot->state != SLOT_EXITED &&
			slot->pid != 0)
			(void) kill(slot->pid, SIGTERM);
	}
	LWLockRelease(AsyncJobs->lock);

	for (waited = 0; waited < 100; waited++)
	{
		bool		busy = false;

		LWLockAcquire(AsyncJobs->lock, LW_SHARED);
		for (i = 0; i < AsyncJobs->n_slots; i++)
		{
			AsyncJobsSlot *slot = &AsyncJobs->slots[i];

			if (slot->state != SLOT_FREE && slot->state != SLOT_EXITED &&
				slot->pid != 0 && kill(slot->pid, 0) == 0)
				busy = true;
		}
		LWLockRelease(AsyncJobs->lock);
		if (!busy)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	for (i = 0; i < AsyncJobs->n_slots; i++)
		memset(&AsyncJobs->slots[i], 0, sizeof(AsyncJobsSlot));
	LWLockRelease(AsyncJobs->lock);
}

/*
 * Reads pg_database: adds the databases not seen before (their extension
 * state unknown: a probe starts), forgets the ones that are gone.
 */
static void
launcher_scan_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	HASH_SEQ_STATUS seq;
	DatabaseEntry *entry;
	MemoryContext oldcxt = CurrentMemoryContext;

	hash_seq_init(&seq, databases);
	while ((entry = hash_seq_search(&seq)) != NULL)
		entry->seen = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		bool		found;

		CHECK_FOR_INTERRUPTS();
		if (!db->datallowconn || db->datistemplate)
			continue;
		/* a database half-dropped by an interrupted DROP DATABASE */
		if (db->datconnlimit == DATCONNLIMIT_INVALID_DB)
			continue;

		entry = hash_search(databases, &db->oid, HASH_ENTER, &found);
		if (!found)
		{
			memset(((char *) entry) + sizeof(Oid), 0,
				   sizeof(DatabaseEntry) - sizeof(Oid));
			entry->ext = EXT_UNKNOWN;
		}
		strlcpy(entry->datname, NameStr(db->datname), NAMEDATALEN);
		entry->seen = true;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);

	/* forget dropped databases once their workers are gone */
	hash_seq_init(&seq, databases);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		if (!entry->seen && entry->n_workers == 0)
			(void) hash_search(databases, &entry->dboid, HASH_REMOVE, NULL);
	}
}

/*
 * Picks up the databases that created the extension since the last loop.
 */
static void
launcher_collect_pending(void)
{
	Oid			pending[AJ_MAX_PENDING_DBS];
	int			n;
	bool		overflow;
	int			i;

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	n = AsyncJobs->n_pending;
	memcpy(pending, AsyncJobs->pending_dbs, n * sizeof(Oid));
	overflow = AsyncJobs->pending_overflow;
	AsyncJobs->n_pending = 0;
	AsyncJobs->pending_overflow = false;
	LWLockRelease(AsyncJobs->lock);

	if (n == 0 && !overflow)
		return;

	launcher_scan_databases();

	if (overflow)
	{
		HASH_SEQ_STATUS seq;
		DatabaseEntry *entry;

		hash_seq_init(&seq, databases);
		while ((entry = hash_seq_search(&seq)) != NULL)
			if (entry->ext == EXT_ABSENT)
				entry->ext = EXT_UNKNOWN;
	}
	for (i = 0; i < n; i++)
	{
		DatabaseEntry *entry = hash_search(databases, &pending[i],
										   HASH_FIND, NULL);

		if (entry && entry->ext == EXT_ABSENT)
			entry->ext = EXT_UNKNOWN;
	}
}

/*
 * Forgets the workers of a database that have exited, and learns from
 * them whether the database has the extension.
 */
static void
launcher_reap(DatabaseEntry *entry, TimestampTz now)
{
	int			i = 0;
	bool		died = false;

	while (i < entry->n_workers)
	{
		PoolWorker *w = &entry->workers[i];
		pid_t		pid;
		BgwHandleStatus status;
		AsyncJobsSlot *slot = &AsyncJobs->slots[w->slot];

		status = GetBackgroundWorkerPid(w->handle, &pid);
		if (status == BGWH_STARTED || status == BGWH_NOT_YET_STARTED)
		{
			/* a worker past its checks proves the extension is there */
			if (entry->ext != EXT_PRESENT &&
				(slot->state == SLOT_IDLE || slot->state == SLOT_CLAIMING ||
				 slot->state == SLOT_RUNNING))
			{
				entry->ext = EXT_PRESENT;
				entry->warned_no_slot = false;
			}
			i++;
			continue;
		}

		/*
		 * The worker is gone.  One that never got past its start may have
		 * found its database dropped: read pg_database again before
		 * replacing it.
		 */
		if (slot->state == SLOT_STARTING)
			rescan_needed = true;
		switch (slot->exit_reason)
		{
			case EXIT_NO_EXTENSION:
				entry->ext = EXT_ABSENT;
				entry->next_probe =
					TimestampTzPlusMilliseconds(now, 6 * asyncjobs_launcher_naptime);
				break;
			case EXIT_SHUTDOWN:
			case EXIT_SURPLUS:
				break;
			case EXIT_UNKNOWN:
				died = true;
				if (!w->terminating)
				{
					if (now - entry->deaths_since > 10 * USECS_PER_SEC)
					{
						entry->deaths_since = now;
						entry->deaths = 0;
					}
					if (++entry->deaths > 5)
					{
						if (entry->hold_until <= now)
							ereport(LOG,
									(errmsg("asyncjobs workers of database \"%s\" keep exiting; next start in 5 seconds",
											entry->datname)));
						entry->hold_until = TimestampTzPlusMilliseconds(now, 5000);
					}
				}
				break;
		}
		pfree(w->handle);
		slot_free(w->slot);
		entry->workers[i] = entry->workers[--entry->n_workers];
	}

	/*
	 * The jobs a dead worker held wait for a worker to requeue them: its
	 * replacement does as it starts, but the replacement may be held back
	 * (see above) or find no free slot, and the live workers look for
	 * orphans only every few seconds.  Have them look now.
	 */
	if (died && entry->n_workers > 0)
	{
		LWLockAcquire(AsyncJobs->lock, LW_SHARED);
		for (i = 0; i < entry->n_workers; i++)
		{
			AsyncJobsSlot *slot = &AsyncJobs->slots[entry->workers[i].slot];

			slot->requeue_pending = true;
			if (slot->latch)
				SetLatch(slot->latch);
		}
		LWLockRelease(AsyncJobs->lock);
	}
}

/*
 * Starts or stops workers so that the database has the pool it should.
 */
static void
launcher_balance(DatabaseEntry *entry, TimestampTz now, long *next_wait)
{
	int			wanted;

	if (!entry->seen)
		wanted = 0;
	else if (asyncjobs_database_quiesced(entry->dboid))
		wanted = 0;
	else if (entry->ext == EXT_PRESENT)
		wanted = asyncjobs_max_workers;
	else if (entry->ext == EXT_UNKNOWN)
		wanted = 1;
	else if (now >= entry->next_probe)
	{
		entry->ext = EXT_UNKNOWN;
		wanted = 1;
	}
	else
	{
		wanted = 0;
		*next_wait = Min(*next_wait,
						 TimestampDifferenceMilliseconds(now, entry->next_probe));
	}

	/* too many: stop the newest */
	if (entry->n_workers > wanted)
	{
		int			i;
		int			running = 0;

		for (i = 0; i < entry->n_workers; i++)
		{
			PoolWorker *w = &entry->workers[i];

			if (w->terminating)
				continue;
			if (running < wanted)
			{
				running++;
				continue;
			}
			AsyncJobs->slots[w->slot].exit_reason = EXIT_SURPLUS;
			TerminateBackgroundWorker(w->handle);
			w->terminating = true;
		}
		return;
	}

	if (entry->hold_until > now)
	{
		*next_wait = Min(*next_wait,
						 TimestampDifferenceMilliseconds(now, entry->hold_until));
		return;
	}

	while (entry->n_workers < wanted)
	{
		if (!launcher_start_worker(entry))
		{
			/* no slot: try again soon */
			*next_wait = Min(*next_wait, 1000L);
			break;
		}
	}
}

static bool
launcher_start_worker(DatabaseEntry *entry)
{
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;
	int			slot = -1;
	int64		worker_id = 0;
	int			i;
	MemoryContext oldcxt;
	bool		ok;

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	for (i = 0; i < AsyncJobs->n_slots; i++)
	{
		if (AsyncJobs->slots[i].state == SLOT_FREE)
		{
			AsyncJobsSlot *s = &AsyncJobs->slots[i];

			memset(s, 0, sizeof(AsyncJobsSlot));
			s->state = SLOT_STARTING;
			s->dboid = entry->dboid;
			s->worker_id = worker_id = AsyncJobs->next_worker_id++;
			slot = i;
			break;
		}
	}
	LWLockRelease(AsyncJobs->lock);

	if (slot >= 0)
	{
		memset(&bgw, 0, sizeof(bgw));
		bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
		bgw.bgw_restart_time = BGW_NEVER_RESTART;
		snprintf(bgw.bgw_library_name, BGW_MAXLEN, "asyncjobs");
		snprintf(bgw.bgw_function_name, BGW_MAXLEN, "asyncjobs_worker_main");
		snprintf(bgw.bgw_name, BGW_MAXLEN, "asyncjobs worker for database \"%s\"",
				 entry->datname);
		snprintf(bgw.bgw_type, BGW_MAXLEN, "asyncjobs worker");
		bgw.bgw_main_arg = Int32GetDatum(slot);
		memcpy(bgw.bgw_extra, &entry->dboid, sizeof(Oid));
		memcpy(bgw.bgw_extra + sizeof(Oid), &worker_id, sizeof(int64));
		bgw.bgw_notify_pid = MyProcPid;

		oldcxt = MemoryContextSwitchTo(launcher_context);
		ok = RegisterDynamicBackgroundWorker(&bgw, &handle);
		MemoryContextSwitchTo(oldcxt);
	}
	else
		ok = false;

	if (!ok)
	{
		if (slot >= 0)
			slot_free(slot);
		if (!entry->warned_no_slot)
		{
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("asyncjobs could not start a worker for database \"%s\"",
							entry->datname),
					 errdetail("The database has %d of the %d workers it should have.",
							   entry->n_workers, asyncjobs_max_workers),
					 errhint("Consider increasing the configuration parameter \"%s\"; the launcher keeps trying.",
							 "max_worker_processes")));
			entry->warned_no_slot = true;
		}
		return false;
	}

	entry->workers[entry->n_workers].handle = handle;
	entry->workers[entry->n_workers].slot = slot;
	entry->workers[entry->n_workers].terminating = false;
	entry->n_workers++;
	return true;
}

static void
slot_free(int slot)
{
	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	memset(&AsyncJobs->slots[slot], 0, sizeof(AsyncJobsSlot));
	LWLockRelease(AsyncJobs->lock);
}
