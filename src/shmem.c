/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state of asyncjobs: one slot per background worker, the
 *	  launcher's inbox, and wake-ups at commit.
 *
 * Locking: AsyncJobs->lock protects every field of AsyncJobsShared and of
 * its slots, with two exceptions: a worker updates the "live" fields of its
 * own slot (state, job_id, operation, since, jobs_done) without the lock,
 * since readers only display them or use them as a hint, and the latches
 * are set without the lock; the wake-ups read slots without it (see
 * asyncjobs_wake_database).
 *
 * The launcher allocates a slot before it registers a worker (state
 * STARTING), the worker fills in its pid and latch, and marks the slot
 * EXITED when it leaves; the launcher frees it once the postmaster reports
 * the process gone.  A slot's worker_id is unique over the server's lives,
 * so a job row naming a worker_id that no live slot holds belongs to a
 * worker that is gone.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "asyncjobs.h"

AsyncJobsShared *AsyncJobs = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static bool wake_pending = false;		/* wake a worker at commit */
static bool waiters_pending = false;	/* wake asyncjobs.wait() at commit */
static bool notify_launcher_pending = false;
static bool xact_callback_registered = false;

static void asyncjobs_shmem_request_hook(void);
static void asyncjobs_xact_callback(XactEvent event, void *arg);

static Size
asyncjobs_shmem_size(void)
{
	return add_size(offsetof(AsyncJobsShared, slots),
					mul_size(max_worker_processes, sizeof(AsyncJobsSlot)));
}

void
asyncjobs_shmem_request(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = asyncjobs_shmem_request_hook;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = asyncjobs_shmem_startup;
}

static void
asyncjobs_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(asyncjobs_shmem_size());
	RequestNamedLWLockTranche("asyncjobs", 1);
}

/*
 * Creates or attaches to the shared state.  After a crash the postmaster
 * creates shared memory anew, so every slot starts free again.
 */
void
asyncjobs_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	AsyncJobs = ShmemInitStruct("asyncjobs", asyncjobs_shmem_size(), &found);
	if (!found)
	{
		memset(AsyncJobs, 0, asyncjobs_shmem_size());
		AsyncJobs->lock = &(GetNamedLWLockTranche("asyncjobs"))->lock;
		/*
		 * Worker ids start from the clock in microseconds, so that ids of a
		 * later life of the server never meet those of an earlier one.
		 */
		AsyncJobs->next_worker_id = (int64) GetCurrentTimestamp();
		ConditionVariableInit(&AsyncJobs->completion_cv);
		AsyncJobs->n_slots = max_worker_processes;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * SQL functions call this first: without preloading there is no shared
 * state and no worker to talk to.
 */
void
asyncjobs_require_shmem(void)
{
	if (AsyncJobs == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("asyncjobs must be loaded via \"shared_preload_libraries\""),
				 errhint("Add asyncjobs to \"shared_preload_libraries\" in postgresql.conf and restart the server.")));
}

/*
 * Asks for an idle worker of this database, and the sessions in
 * asyncjobs.wait(), to be woken when the current transaction commits.
 * Nothing happens if it aborts.
 */
void
asyncjobs_wake_at_commit(void)
{
	asyncjobs_wake_worker_at_commit();
	waiters_pending = true;
}

/*
 * Asks only for an idle worker of this database to be woken when the
 * current transaction commits: what enqueue needs.  A new job completes no
 * job, so the sessions in asyncjobs.wait() may sleep on; broadcasting to
 * them took the condition variable's spinlock, which every session shares,
 * at the commit of every enqueue.
 */
void
asyncjobs_wake_worker_at_commit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(asyncjobs_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_pending = true;
}

/*
 * Asks for the launcher to be told about this database when the current
 * transaction commits (after CREATE EXTENSION: a worker started earlier
 * would not see the extension yet).
 */
void
asyncjobs_notify_launcher_at_commit(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(asyncjobs_xact_callback, NULL);
		xact_callback_registered = true;
	}
	notify_launcher_pending = true;
}

static void
asyncjobs_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_pending)
			{
				wake_pending = false;
				asyncjobs_wake_database(MyDatabaseId, 1);
			}
			if (waiters_pending)
			{
				waiters_pending = false;
				/* the change may have completed a job someone waits for */
				ConditionVariableBroadcast(&AsyncJobs->completion_cv);
			}
			if (notify_launcher_pending)
			{
				notify_launcher_pending = false;
				asyncjobs_notify_launcher(MyDatabaseId);
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared transaction's jobs are found by the poll */
			wake_pending = false;
			waiters_pending = false;
			notify_launcher_pending = false;
			break;
		default:
			break;
	}
}

/*
 * Sets the latch of up to "count" workers of a database that wait for work
 * (idle ones first, then ones about to look).  Starts at a different slot
 * for each call and each process, so that wake-ups spread over the pool.
 *
 * Every commit that enqueued runs this, so it takes no lock and writes no
 * shared memory (it took the shared lock and bumped a shared round-robin
 * counter, two cache lines every enqueuer and worker wrote: 0.6 us of a
 * 55 us one-job transaction, measured with perf).  No lock is needed: a
 * worker writes its slot's state without one, and a slot read while the
 * launcher gives it to another worker yields at worst a latch set for
 * nothing, which every latch user tolerates.  The barrier pairs with the
 * one a worker makes after marking itself CLAIMING and before its claim
 * takes a snapshot: either the claim sees what the caller committed, or
 * this sees the worker claiming and wakes it to look again.
 */
void
asyncjobs_wake_database(Oid dboid, int count)
{
	static uint32 cursor = 0;
	int			n;
	int			start;
	int			pass;

	if (AsyncJobs == NULL || count <= 0)
		return;

	n = AsyncJobs->n_slots;
	if (n <= 0)
		return;
	start = (int) (((uint32) MyProcPid + cursor++) % (uint32) n);

	pg_memory_barrier();
	for (pass = 0; pass < 2 && count > 0; pass++)
	{
		AsyncJobsSlotState wanted = (pass == 0) ? SLOT_IDLE : SLOT_CLAIMING;
		int			i;

		for (i = 0; i < n && count > 0; i++)
		{
			volatile AsyncJobsSlot *slot = &AsyncJobs->slots[(start + i) % n];
			Latch	   *latch;

			if (slot->dboid != dboid || slot->state != wanted)
				continue;
			latch = slot->latch;
			if (latch != NULL)
			{
				SetLatch(latch);
				count--;
			}
		}
	}
}

/*
 * Tells the launcher that a database's extension state changed (it was
 * created), so that the launcher starts its workers now.
 */
void
asyncjobs_notify_launcher(Oid dboid)
{
	Latch	   *latch;

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	if (AsyncJobs->n_pending < AJ_MAX_PENDING_DBS)
		AsyncJobs->pending_dbs[AsyncJobs->n_pending++] = dboid;
	else
		AsyncJobs->pending_overflow = true;
	latch = AsyncJobs->launcher_latch;
	LWLockRelease(AsyncJobs->lock);

	if (latch)
		SetLatch(latch);
}

/*
 * Is the database kept free of workers right now?  (See utility.c.)
 */
bool
asyncjobs_database_quiesced(Oid dboid)
{
	bool		result = false;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	LWLockAcquire(AsyncJobs->lock, LW_SHARED);
	for (i = 0; i < AJ_MAX_QUIESCED_DBS; i++)
	{
		if (AsyncJobs->quiesced_dbs[i] == dboid &&
			AsyncJobs->quiesced_until[i] > now)
			result = true;
	}
	LWLockRelease(AsyncJobs->lock);
	return result;
}

/*
 * Keeps the launcher from starting workers for a database (on), or lets it
 * again (off).  A quiesce lapses by itself after a minute, so a backend
 * that dies while holding one cannot keep a database without workers.
 */
void
asyncjobs_quiesce_database(Oid dboid, bool on)
{
	int			i;
	int			free_i = -1;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	for (i = 0; i < AJ_MAX_QUIESCED_DBS; i++)
	{
		if (AsyncJobs->quiesced_dbs[i] == dboid)
		{
			free_i = i;
			break;
		}
		if (free_i < 0 &&
			(AsyncJobs->quiesced_dbs[i] == InvalidOid ||
			 AsyncJobs->quiesced_until[i] <= now))
			free_i = i;
	}
	if (free_i >= 0)
	{
		AsyncJobs->quiesced_dbs[free_i] = on ? dboid : InvalidOid;
		AsyncJobs->quiesced_until[free_i] =
			on ? TimestampTzPlusMilliseconds(now, 60 * 1000) : 0;
	}
	LWLockRelease(AsyncJobs->lock);
}

/*
 * Whether a worker id belongs to a worker process that exists now.
 */
bool
asyncjobs_worker_live(int64 worker_id)
{
	bool		live = false;
	int			i;

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
	return live;
}
