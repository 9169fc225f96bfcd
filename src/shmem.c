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
static int	headsup_slot = -1;	/* the worker the heads-up woke: see below */
static bool waiters_pending = false;	/* wake asyncjobs.wait() at commit */
static bool notify_launcher_pending = false;
static bool xact_callback_registered = false;

/*
 * What the current transaction did to the claim order (see "Claim
 * watermarks" in worker.c): put jobs back before where claims start
 * (fronts_reset_pending), or enqueued jobs, the first of which in claim
 * order has this priority and due time.
 */
static bool fronts_reset_pending = false;
static bool enqueued_pending = false;
static int32 enqueued_priority = 0;
static TimestampTz enqueued_runafter = 0;

static void asyncjobs_shmem_request_hook(void);
static void asyncjobs_xact_callback(XactEvent event, void *arg);
static void tell_workers(Oid dboid, bool all, int32 priority, TimestampTz runafter);
static int	wake_start(int n);
static bool wake_slot_in(int slotno, Oid dboid, AsyncJobsSlotState wanted);
static int	headsup_worker(Oid dboid);
static bool wake_slot(int slotno, Oid dboid);

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
	/*
	 * What calls this (a resume, retry or postpone, a requeue, a job done
	 * that others depend on) may have made a job ready before where the
	 * workers' claims start: their next claims start from the start.
	 */
	fronts_reset_pending = true;
}

/*
 * An enqueue: wake a worker at commit, and tell those whose claims start
 * after the new job's place in the claim order (so would miss it).
 */
void
asyncjobs_enqueued_at_commit(int32 priority, TimestampTz runafter)
{
	if (!enqueued_pending || priority < enqueued_priority ||
		(priority == enqueued_priority && runafter < enqueued_runafter))
	{
		enqueued_priority = priority;
		enqueued_runafter = runafter;
	}
	enqueued_pending = true;
	asyncjobs_wake_worker_at_commit();
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
		case XACT_EVENT_PRE_COMMIT:
			/* the commit's WAL flush is next: a cold worker can warm up */
			if (wake_pending)
				headsup_slot = headsup_worker(MyDatabaseId);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* before the wake-up: the woken worker reads what this sets */
			if (fronts_reset_pending)
				asyncjobs_reset_fronts(MyDatabaseId);
			else if (enqueued_pending)
				tell_workers(MyDatabaseId, false, enqueued_priority,
							 enqueued_runafter);
			fronts_reset_pending = false;
			enqueued_pending = false;
			if (wake_pending)
			{
				wake_pending = false;
				/* the worker the heads-up warmed up, if it still looks */
				if (headsup_slot < 0 || !wake_slot(headsup_slot, MyDatabaseId))
					asyncjobs_wake_database(MyDatabaseId, 1);
			}
			headsup_slot = -1;
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
			headsup_slot = -1;
			waiters_pending = false;
			notify_launcher_pending = false;
			fronts_reset_pending = false;
			enqueued_pending = false;
			break;
		default:
			break;
	}
}

/*
 * Where a scan of the slots for a worker to wake starts: a different slot
 * for each call and each process, so that wake-ups spread over the pool.
 */
static int
wake_start(int n)
{
	static uint32 cursor = 0;

	return (int) (((uint32) MyProcPid + cursor++) % (uint32) n);
}

/*
 * Sets the latch of the worker in slot "slotno" if it belongs to the
 * database and is in the given state.  Returns whether it did.
 */
static bool
wake_slot_in(int slotno, Oid dboid, AsyncJobsSlotState wanted)
{
	volatile AsyncJobsSlot *slot = &AsyncJobs->slots[slotno];
	Latch	   *latch;

	if (slot->dboid != dboid || slot->state != wanted)
		return false;
	latch = slot->latch;
	if (latch == NULL)
		return false;
	SetLatch(latch);
	return true;
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
	int			n;
	int			start;
	int			pass;

	if (AsyncJobs == NULL || count <= 0)
		return;

	n = AsyncJobs->n_slots;
	if (n <= 0)
		return;
	start = wake_start(n);

	pg_memory_barrier();
	for (pass = 0; pass < 2 && count > 0; pass++)
	{
		AsyncJobsSlotState wanted = (pass == 0) ? SLOT_IDLE : SLOT_CLAIMING;
		int			i;

		for (i = 0; i < n && count > 0; i++)
			if (wake_slot_in((start + i) % n, dboid, wanted))
				count--;
	}
}

/*
 * Heads-up.  A worker that has waited for work a while (AJ_HEADSUP_IDLE_MS)
 * has lost its code and data from the CPU's caches: its first claim costs
 * several times what the next one does (0.3 against 0.12 ms for a claim of
 * one job on an idle server, measured in the worker), and that was most of
 * the time from an enqueue's commit to its job's start.  So an enqueuing
 * transaction, just before its commit writes and flushes its WAL (about a
 * millisecond on an ordinary disk), wakes one such worker of its database:
 * the worker claims at once, finds nothing it can see yet (or what others
 * committed meanwhile), and waits again, warm.  At the commit the same
 * worker is woken (wake_slot), and its real claim is a warm one.
 *
 * The worker does not know a heads-up from a wake-up: a claim that finds
 * nothing costs nothing but its time.  A worker idle for less than
 * AJ_HEADSUP_IDLE_MS gets none (it is warm, and at a steady rate of
 * enqueues this would double its claims): a worker makes at most one such
 * claim per AJ_HEADSUP_IDLE_MS.  If the transaction aborts, the worker
 * made one claim for nothing.  Returns the slot woken, or -1.
 */
static int
headsup_worker(Oid dboid)
{
	TimestampTz now = 0;
	int			n;
	int			start;
	int			i;

	if (AsyncJobs == NULL)
		return -1;
	n = AsyncJobs->n_slots;
	if (n <= 0)
		return -1;
	start = wake_start(n);
	pg_memory_barrier();
	for (i = 0; i < n; i++)
	{
		int			slotno = (start + i) % n;
		volatile AsyncJobsSlot *slot = &AsyncJobs->slots[slotno];
		TimestampTz since;

		if (slot->dboid != dboid || slot->state != SLOT_IDLE)
			continue;
		/* the clock only when there is an idle worker to ask about */
		if (now == 0)
			now = GetCurrentTimestamp();
		since = (TimestampTz) pg_atomic_read_u64(&slot->idle_since);
		if (since == 0 || now - since < AJ_HEADSUP_IDLE_MS * (int64) 1000)
			continue;
		if (wake_slot_in(slotno, dboid, SLOT_IDLE))
			return slotno;
	}
	return -1;
}

/*
 * Wakes one given worker, if it still belongs to the database and waits
 * for work or looks for it (the barrier and the CLAIMING case as in
 * asyncjobs_wake_database).  Returns whether it did.
 */
static bool
wake_slot(int slotno, Oid dboid)
{
	if (AsyncJobs == NULL || slotno >= AsyncJobs->n_slots)
		return false;
	pg_memory_barrier();
	return wake_slot_in(slotno, dboid, SLOT_IDLE) ||
		wake_slot_in(slotno, dboid, SLOT_CLAIMING);
}

/*
 * Claim fronts.  A worker's claims start each operation's scan after its
 * watermark, the claim key of the last job of the operation it took
 * (worker.c, "Claim watermarks").  A job that comes to wait before one is
 * missed by those claims: whatever puts one there tells the workers of the
 * database, which then claim from the start (their slot's fronts_reset).
 *
 * An enqueue tells only the workers whose watermarks it would miss, so
 * that a steady flow of jobs into a backlog does not send every claim back
 * to the start.  Each worker publishes the greatest (priority, runafter)
 * of its watermarks, whatever the operation, after each claim.  An enqueue
 * that commits while a worker claims compares its jobs with the
 * watermarks of the worker's last claim: one of its jobs that the claim
 * does not see and that sorts before the new watermarks (its transaction
 * began before the jobs that claim took were enqueued) is left to the
 * periodic claim from the start.  (Publishing "everything" during claims
 * closed that window, but then the enqueue of every round of a drain told
 * the workers, and while the xmin horizon was held back each claim from
 * the start cost up to a second: bench/xmin dropped by 38 %.)  The two
 * halves are written in an order that makes a torn read see a greater
 * front, never a smaller one (a reset asked for nothing, at worst).
 */

static inline uint32
front_encode_priority(int32 priority)
{
	return ((uint32) priority) ^ 0x80000000;	/* order-preserving */
}

static inline uint64
front_encode_runafter(TimestampTz runafter)
{
	return ((uint64) runafter) ^ (UINT64CONST(1) << 63);
}

/*
 * After a claim: publishes the greatest of this worker's watermarks (if
 * "any"; else none, and no enqueue needs to tell it anything).  The due
 * time first, then the priority.
 */
void
asyncjobs_publish_front(bool any, int32 priority, TimestampTz runafter)
{
	pg_atomic_write_u64(&MySlot->front_runafter,
						any ? front_encode_runafter(runafter) : 0);
	pg_write_barrier();
	pg_atomic_write_u32(&MySlot->front_priority,
						any ? front_encode_priority(priority) : 0);
}

/*
 * Tells the workers of the database to claim from the start next: all of
 * them, or (after the commit of an enqueue whose first job in claim order
 * has this priority and due time) those whose front is at or after it.
 * Operations are not compared: the front is the greatest watermark of any
 * operation, so this errs on the side of a reset.  No lock, as in
 * asyncjobs_wake_database: a slot given to another worker meanwhile gets
 * a reset it does not need.
 */
static void
tell_workers(Oid dboid, bool all, int32 priority, TimestampTz runafter)
{
	uint32		p = front_encode_priority(priority);
	uint64		r = front_encode_runafter(runafter);
	int			i;

	if (AsyncJobs == NULL)
		return;
	pg_memory_barrier();
	for (i = 0; i < AsyncJobs->n_slots; i++)
	{
		AsyncJobsSlot *slot = &AsyncJobs->slots[i];
		uint32		fp;
		uint64		fr;

		if (slot->dboid != dboid)
			continue;
		if (!all)
		{
			fp = pg_atomic_read_u32(&slot->front_priority);
			pg_read_barrier();
			fr = pg_atomic_read_u64(&slot->front_runafter);
			if (fp == 0 && fr == 0)
				continue;		/* no watermarks: it claims from the start */
			if (p > fp || (p == fp && r > fr))
				continue;		/* after its front: its claims find it */
		}
		/* written only when clear: most commits write no shared memory */
		if (pg_atomic_read_u32(&slot->fronts_reset) == 0)
			pg_atomic_write_u32(&slot->fronts_reset, 1);
	}
}

/* every worker of the database claims from the start next */
void
asyncjobs_reset_fronts(Oid dboid)
{
	tell_workers(dboid, true, 0, 0);
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
