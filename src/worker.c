/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The per-database asyncjobs worker: claims batches of due jobs with
 *	  FOR UPDATE SKIP LOCKED, runs them in a transaction that also writes
 *	  their outcomes, and requeues the jobs of workers that died.
 *
 * Loop:
 *	  claim up to asyncjobs.batch_size jobs (about asyncjobs.batch_max_age
 *	  of work; one at a time while jobs run long) and mark them InProgress
 *	  (one commit, which does not wait for the WAL flush: see inflight.c);
 *	  run them one after the other, each in a subtransaction
 *	  with its outcome (executor.c, run_claimed()), committing after
 *	  batch_size jobs or batch_max_age; then look for more.  When a claim
 *	  finds nothing the worker sleeps until an enqueue wakes it (shmem.c)
 *	  or asyncjobs.poll_interval passes.
 *
 * A claim starts each operation's scan after the last job the worker took
 * of it (see "Claim watermarks"), with a claim from the start when told
 * that jobs wait before that, and at least every asyncjobs.poll_interval.
 *
 * A job stays Locked with its worker's id while it waits and runs.  If the
 * worker dies, the job keeps that id, which no live slot holds any more:
 * the next worker to start (the launcher replaces a dead worker at once),
 * or any worker's periodic check, requeues it.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/instrument.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "asyncjobs.h"

/*
 * A worker claims several jobs at once only while jobs are short: a
 * claimed job waits for the ones before it in the claim, and long jobs are
 * better spread over the pool.  After a claim whose jobs took less than
 * SHORT_JOB_US on average, the next claim is sized to hold about
 * asyncjobs.batch_max_age of work at that average (no more than twice the
 * last claim, and at most asyncjobs.batch_size); after a slower claim, it
 * is one job.  So tiny jobs are claimed and committed by the hundred, and
 * a worker never holds much more than a batch age of others' work.
 */
#define SHORT_JOB_US			(20 * 1000)

/* jobs of dead workers, and of external workers whose lease ran out */
#define REQUEUE_SQL \
	"SELECT asyncjobs._requeue_orphans() + asyncjobs._requeue_expired_leases()"

/* the columns the workers' outcome statements write into history */
#define INSERT_HISTORY \
	"INSERT INTO asyncjobs.job_history " \
	" (asyncoperationid, name, operationtype, messagename, statecode, " \
	"  statuscode, ownerid, createdon, modifiedon, startedon, completedon, " \
	"  postponeuntil, executiontimespan, retrycount, maxretries, errorcode, " \
	"  message, friendlymessage, data, result, priority, depth, " \
	"  correlationid, correlationupdatedtime, dependencytoken, dedupekey, " \
	"  recurrencepattern, recurrencestarttime, regardingobjectid, hostid, " \
	"  parentid, attempts) "

/* checks that are not worth doing on every loop */
#define ORPHAN_CHECK_MS			(10 * 1000)
#define PARTITION_CHECK_MS		(3600 * 1000)

int64		asyncjobs_current_job_id = 0;

AsyncJobsSlot *MySlot = NULL;
static int64 MyWorkerId = 0;
static char *MyHostId = NULL;
static MemoryContext batch_context = NULL;

static SPIPlanPtr claim_plan = NULL;
static SPIPlanPtr finish_plan = NULL;
static SPIPlanPtr finish_direct_plan = NULL;
static SPIPlanPtr retry_plan = NULL;

static void worker_detach(int code, Datum arg);
static bool worker_extension_present(char **dbname);
static void job_table_changed(Datum arg, Oid relid);

/*
 * The extension's job table, and whether the relcache said it changed (it
 * does when the extension is dropped): then the next claim first checks
 * that the extension is still there.
 */
static Oid	job_relid = InvalidOid;
static bool extension_check_needed = false;
/* job_claim_idx, looked up at the first claim after the job table changed */
static Oid	claim_index_relid = InvalidOid;

/* what became of a claimed job (run_claimed) */
typedef enum RunResult
{
	RUN_DONE,					/* it ran (or its cancel or pause was applied) */
	RUN_RELEASED,				/* not run: its fused batch committed first,
								 * the job is waiting again */
	RUN_CLASSIC					/* not run, or run too long and undone, in a
								 * fused batch: claim it the usual way next */
} RunResult;

/* the next claim is not to be fused (see the worker's loop) */
static bool classic_next = false;

static int	claim_jobs(AsyncJob **jobs, int limit, bool fused);
static int	claim_or_exit(AsyncJob **jobs, int limit, bool fused);
static RunResult run_claimed(AsyncJob *job, uint32 batch_seq);
static void batch_adopt_claim(void);
static bool record_or_defer(AsyncJob *job, AsyncJobOutcome *outcome);
static bool flush_deferred(void);
static void finish_job_run(void);
static void batch_commit(void);


static bool run_maintenance(const char *sql);


static void write_trace(AsyncJob *job, AsyncJobOutcome *outcome);
static Jsonb *success_attempt(AsyncJob *job, AsyncJobOutcome *outcome);
static void push_jsonb_string(JsonbParseState **state, JsonbIteratorToken token,
							  const char *str);

/*
 * Claim watermarks.
 *
 * A claim reads each operation's jobs from job_claim_idx in claim order
 * (priority, runafter, asyncoperationid).  Read from the operation's first
 * entry, it passes the entries of every job done since vacuum last ran:
 * the first scan to meet one finds its tuple dead and marks it, later
 * scans skip it unread, but they still walk its leaf page.  In a drain of
 * 200,000 jobs that walk was a fifth of the workers' time (perf: _bt_first
 * 16 %), growing with the drain.  And while a transaction holds back the
 * xmin horizon, no scan may mark them: every claim visits the heap tuple
 * of every job done since the horizon was pinned.
 *
 * So a worker remembers, per operation, the claim key of the last job its
 * last claim took (its watermark), and its claims start each operation's
 * scan after that key.  A job that comes to wait before a watermark is
 * missed by those claims, so whatever puts one there says so, and the
 * worker's next claim starts from the start (a "full" claim) and sets the
 * watermarks anew (shmem.c, claim fronts):
 * - an enqueue whose job sorts at or before a worker's greatest watermark
 *   (a higher priority than the backlog, a transaction older than it, a
 *   postpone_until in the past) tells that worker, after its commit;
 * - resume, retry, postpone, cancel, a requeue of a lost job, an external
 *   worker's outcome (asyncjobs._wake_at_commit) tell every worker;
 * - a worker that completes a job with a dependency token (the next one of
 *   the token is ready now) or exits tells every worker;
 * - the jobs of a worker's fused batch that it did not run (the batch
 *   committed early) or rolled back wait again before its own watermark,
 *   not the others' (they skipped the jobs, locked): it moves its own
 *   watermark back before them.
 * What nobody tells -- a postponed or retried job that falls due before a
 * watermark (one of a higher priority than the backlog), a change made
 * with plain SQL, an enqueue that commits during a claim with a job that
 * claim misses and sorts before its new watermarks -- waits for a full
 * claim, which runs at least every
 * asyncjobs.poll_interval: the time an idle worker may already take to see
 * a postponed job fall due.
 *
 * Watermark mode.  Those periodic full claims are cheap while scans can
 * mark entries dead; while the horizon is held back each visits the heap
 * tuples of all the jobs done since it was pinned.  Then the workers take
 * turns (full_claim_due), so that the pool pays for one such scan a
 * second, not one per worker, and less often once a scan takes longer
 * than a twentieth of that: its cost grows with the hold.  The measure of expensive is deterministic
 * and counts exactly that waste: the entries of job_claim_idx that a full
 * claim read without finding a tuple its snapshot sees (the index's tuples
 * returned minus heap tuples fetched, from the backend's pending
 * statistics; needs track_counts).  A full claim that reads more than
 * asyncjobs.max_workers * asyncjobs.batch_size plus
 * asyncjobs.claim_watermark_threshold enters watermark mode.  (The shared
 * buffers a claim touches tell the two cases apart less well: a healthy
 * claim also walks the leaf pages of entries marked dead until vacuum
 * removes them.)  Leaving takes a full claim that is cheap by both
 * measures: right after the horizon moves on, the first scans mark the
 * entries of all the jobs done meanwhile dead, and until vacuum removes
 * them every claim from the start still walks their leaf pages -- after a
 * hold of minutes, tens of thousands of them; so a worker stays in
 * watermark mode while a full claim touches more than
 * WATERMARK_LEAVE_BUFFERS plus WATERMARK_LEAVE_BUFFERS_PER_JOB per job.
 * asyncjobs.claim_watermark_threshold = 0 turns watermarks off: every
 * claim starts from the start.
 *
 * An operation for which a claim took nothing keeps its watermark: the
 * jobs after it are just not there yet.  At most MAX_WATERMARKS operations
 * are remembered, in their own context; the one moved least recently makes
 * room for a new one.
 */
#define MAX_WATERMARKS				64
#define WATERMARK_LEAVE_BUFFERS		2000
#define WATERMARK_LEAVE_BUFFERS_PER_JOB	20

typedef struct ClaimWatermark
{
	char	   *operation;		/* in watermark_context */
	int32		priority;
	TimestampTz runafter;
	int64		id;
	uint64		moved;			/* claim_count of the claim that set it */
} ClaimWatermark;

static MemoryContext watermark_context = NULL;
static ClaimWatermark watermarks[MAX_WATERMARKS];
static int	n_watermarks = 0;
static uint64 claim_count = 0;
static TimestampTz last_full_claim = 0;
static int64 full_claim_us = 0;	/* how long the last one took */

/* in watermark mode, claims from the start take at most 1/20 of the time */
#define FULL_CLAIM_SPACING			20

/* the claim's jobs all wait again (its fused batch was rolled back) */
static bool claim_undone = false;

static bool full_claim_due(TimestampTz now);
static int64 claim_index_misses(Oid indexid);
static void watermark_note(const char *operation, int32 priority,
						   TimestampTz runafter, int64 id);
static void watermark_args(Datum *args, char *nulls);
static void watermark_decide(const char *from, bool full, TimestampTz start,
							 int64 misses, int64 buffers, int n);
static void watermark_publish(void);
static void watermark_lower(const AsyncJob *job);

void
asyncjobs_worker_main(Datum main_arg)
{
	int			slotno = DatumGetInt32(main_arg);
	Oid			dboid;
	TimestampTz last_orphan_check;
	TimestampTz last_partition_check;
	char	   *dbname = NULL;
	int			claim_size = 1;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	memcpy(&MyWorkerId, MyBgworkerEntry->bgw_extra + sizeof(Oid), sizeof(int64));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* take our slot; the launcher filled in the database and our id */
	if (slotno < 0 || slotno >= AsyncJobs->n_slots)
		proc_exit(0);
	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	MySlot = &AsyncJobs->slots[slotno];
	if (MySlot->worker_id != MyWorkerId || MySlot->state != SLOT_STARTING)
	{
		LWLockRelease(AsyncJobs->lock);
		MySlot = NULL;
		proc_exit(0);
	}
	MySlot->pid = MyProcPid;
	MySlot->latch = MyLatch;
	MySlot->requeue_pending = false;	/* done below, as we start */
	MySlot->started = GetCurrentTimestamp();
	LWLockRelease(AsyncJobs->lock);
	before_shmem_exit(worker_detach, (Datum) 0);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("asyncjobs worker");

	if (!worker_extension_present(&dbname))
	{
		MySlot->exit_reason = EXIT_NO_EXTENSION;
		proc_exit(0);
	}

	asyncjobs_pin_worker_settings();

	batch_context = AllocSetContextCreate(TopMemoryContext,
										  "asyncjobs worker batch",
										  ALLOCSET_DEFAULT_SIZES);
	watermark_context = AllocSetContextCreate(TopMemoryContext,
											  "asyncjobs worker watermarks",
											  ALLOCSET_SMALL_SIZES);
	MyHostId = MemoryContextStrdup(TopMemoryContext,
								   psprintf("%d@%s", MyProcPid, dbname));

	/* now we are a proper member of the pool: tell the launcher */
	MySlot->state = SLOT_CLAIMING;
	LWLockAcquire(AsyncJobs->lock, LW_SHARED);
	if (AsyncJobs->launcher_latch)
		SetLatch(AsyncJobs->launcher_latch);
	LWLockRelease(AsyncJobs->lock);

	/* the jobs of claims that a crash undid, then those of dead workers */
	asyncjobs_inflight_open(MyWorkerId);
	asyncjobs_inflight_recover();
	(void) run_maintenance(REQUEUE_SQL);
	(void) run_maintenance("SELECT asyncjobs.maintain_partitions()");
	last_orphan_check = last_partition_check = GetCurrentTimestamp();

	for (;;)
	{
		TimestampTz now;
		int			n = 0;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/* a worker of this database died: requeue its jobs (launcher.c) */
		if (MySlot->requeue_pending)
		{
			MySlot->requeue_pending = false;
			pg_memory_barrier();
			/* it may have died in a fused batch: see inflight.c */
			asyncjobs_inflight_recover();
			(void) run_maintenance(REQUEUE_SQL);
		}

		if (asyncjobs_enabled)
		{
			AsyncJob   *jobs;
			int			i;
			uint32		batch_seq;
			bool		fused;

			/* mark ourselves as looking before the claim takes its snapshot */
			MySlot->state = SLOT_CLAIMING;
			pg_memory_barrier();

			MemoryContextReset(batch_context);
			claim_size = Min(claim_size, asyncjobs_batch_size);
			batch_seq = pg_atomic_read_u32(&MySlot->control_seq);

			/*
			 * Fused, while jobs run short: the claim only locks the jobs, and
			 * they run in its transaction (see claim_jobs).
			 */
			fused = asyncjobs_fused_batches && asyncjobs_batch_max_age > 0 &&
				claim_size > 1 && !classic_next;
			classic_next = false;
			n = claim_or_exit(&jobs, claim_size, fused);
			if (n > 0)
			{
				TimestampTz batch_start = GetCurrentTimestamp();
				int			ran = 0;
				RunResult	res = RUN_DONE;

				MySlot->state = SLOT_RUNNING;
				/* a full batch suggests more work: share it */
				if (n == claim_size)
					asyncjobs_wake_database(MyDatabaseId, 1);
				for (i = 0; i < n; i++)
				{
					res = run_claimed(&jobs[i], batch_seq);
					if (res != RUN_DONE)
						break;
					ran++;
				}
				batch_commit();
				/* every job of the claim has its outcome committed, or is free */
				asyncjobs_inflight_clear();

				/*
				 * The claim's jobs that wait again (those a fused batch that
				 * stopped early did not run, or all if it was rolled back)
				 * sort before the watermarks: this worker's next claim starts
				 * before them (the others' claims skipped them as locked).
				 * Jobs that depended on a job done may sort before anyone's:
				 * the whole pool starts from the start.
				 */
				for (i = claim_undone ? 0 : ran; i < n; i++)
					watermark_lower(&jobs[i]);
				claim_undone = false;
				for (i = 0; i < n; i++)
					if (jobs[i].dependent)
					{
						asyncjobs_reset_fronts(MyDatabaseId);
						break;
					}

				/*
				 * A fused batch that stopped early left its other jobs waiting:
				 * a job that ran too long, a bulk delete or a cancel asks for a
				 * claim that marks it InProgress next.
				 */
				if (res == RUN_CLASSIC)
					classic_next = true;
				if (res == RUN_CLASSIC && ran == 0)
					claim_size = 1;
				else
				{
					int64		avg_us = (GetCurrentTimestamp() - batch_start) / Max(ran, 1);

					if (avg_us < SHORT_JOB_US)
					{
						int64		target_us = Max((int64) asyncjobs_batch_max_age * 1000,
													SHORT_JOB_US);
						int64		fits = target_us / Max(avg_us, 1);

						claim_size = (int) Max(1, Min(Min(fits, (int64) claim_size * 2),
													  (int64) asyncjobs_batch_size));
					}
					else
						claim_size = 1;
				}
			}
		}

		now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(last_orphan_check, now, ORPHAN_CHECK_MS))
		{
			asyncjobs_inflight_recover();
			(void) run_maintenance(REQUEUE_SQL);
			/* backlog samples and rollup compaction (85_monitoring.sql) */
			(void) run_maintenance("SELECT asyncjobs._monitor_tick()");
			last_orphan_check = now;
		}
		if (TimestampDifferenceExceeds(last_partition_check, now, PARTITION_CHECK_MS) ||
			now / USECS_PER_DAY != last_partition_check / USECS_PER_DAY)
		{
			last_partition_check = now;
			/* on failure (a lock held too long), try again in a minute */
			if (!run_maintenance("SELECT asyncjobs.maintain_partitions()"))
				last_partition_check = now - (PARTITION_CHECK_MS - 60 * 1000) * (int64) 1000;
		}

		/* after a batch, look again at once: jobs may have come meanwhile */
		if (n > 0)
			continue;

		/* the time first: an enqueuer that sees IDLE reads it (shmem.c) */
		pg_atomic_write_u64(&MySlot->idle_since, (uint64) GetCurrentTimestamp());
		pg_write_barrier();
		MySlot->state = SLOT_IDLE;
		pgstat_report_activity(STATE_IDLE, NULL);
		rc = WaitLatch(MyLatch,
					   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   asyncjobs_poll_interval,
					   PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);

		/*
		 * The extension may have been dropped while we slept.  Checked on
		 * the poll's timeout only: a wake-up means an enqueue, which needs
		 * the extension, and must not wait for an extra transaction.
		 */
		if ((rc & WL_TIMEOUT) && !worker_extension_present(NULL))
		{
			MySlot->exit_reason = EXIT_NO_EXTENSION;
			proc_exit(0);
		}
	}
}

static void
worker_detach(int code, Datum arg)
{
	if (MySlot == NULL)
		return;
	asyncjobs_inflight_remove();
	/* the jobs of a fused batch it rolled back wait again: see claim fronts */
	asyncjobs_reset_fronts(MyDatabaseId);
	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	if (MySlot->worker_id == MyWorkerId)
	{
		MySlot->state = SLOT_EXITED;
		MySlot->pid = 0;
		MySlot->latch = NULL;
		MySlot->job_id = 0;
	}
	LWLockRelease(AsyncJobs->lock);
}

/*
 * Does this database have the extension?  Optionally also returns the
 * database's name, in TopMemoryContext.
 */
static bool
worker_extension_present(char **dbname)
{
	bool		present;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	present = OidIsValid(get_extension_oid(ASYNCJOBS_EXTENSION, true));
	if (dbname)
	{
		*dbname = MemoryContextStrdup(TopMemoryContext,
									  get_database_name(MyDatabaseId));
		if (present)
		{
			job_relid = get_relname_relid("job",
										  get_namespace_oid(ASYNCJOBS_SCHEMA, true));
			CacheRegisterRelcacheCallback(job_table_changed, (Datum) 0);
		}
	}
	CommitTransactionCommand();
	return present;
}

static void
job_table_changed(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == job_relid)
	{
		extension_check_needed = true;
		claim_index_relid = InvalidOid;
	}
}

SPIPlanPtr
asyncjobs_prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * claim_jobs(), except that a claim failing because the extension was just
 * dropped (its functions are gone) ends the worker quietly.
 */
static int
claim_or_exit(AsyncJob **jobs, int limit, bool fused)
{
	volatile int n = 0;

	PG_TRY();
	{
		n = claim_jobs(jobs, limit, fused);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		if (!worker_extension_present(NULL))
		{
			MySlot->exit_reason = EXIT_NO_EXTENSION;
			proc_exit(0);
		}
		ReThrowError(edata);
	}
	PG_END_TRY();
	return n;
}

/* *jobs, in batch_context, from the n rows of asyncjobs._claim in SPI_tuptable */
static void
jobs_from_claim(AsyncJob **jobs, int n)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(batch_context);
	int			i;

	*jobs = palloc0(sizeof(AsyncJob) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		AsyncJob   *job = &(*jobs)[i];
		Datum		v[AJ_CLAIM_COLUMNS];
		bool		null[AJ_CLAIM_COLUMNS];

		/* once per row: reading column by column walked the row each time */
		heap_deform_tuple(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, v, null);
		job->id = DatumGetInt64(v[0]);
		job->operation = TextDatumGetCString(v[1]);
		job->operationtype = null[2] ? 0 : DatumGetInt32(v[2]);
		job->owner = null[3] ? InvalidOid : DatumGetObjectId(v[3]);
		/* data is NOT NULL; kept as jsonb, not a text to parse again */
		job->data = null[4] ? NULL : DatumGetJsonbPCopy(v[4]);
		job->retrycount = null[5] ? 0 : DatumGetInt32(v[5]);
		job->maxretries = null[6] ? 0 : DatumGetInt32(v[6]);
		job->handler = null[7] ? InvalidOid : DatumGetObjectId(v[7]);
		job->timeout_ms = null[8] ? 0 : DatumGetInt64(v[8]);
		job->retry_delay_ms = null[9] ? 10000 : DatumGetInt64(v[9]);
		job->retry_delay_max_ms = null[10] ? 3600 * 1000 : DatumGetInt64(v[10]);
		job->priority = null[13] ? 0 : DatumGetInt32(v[13]);
		job->runafter = null[14] ? 0 : DatumGetTimestampTz(v[14]);
		if (null[15])
			ItemPointerSetInvalid(&job->tid);
		else
			ItemPointerCopy((ItemPointer) DatumGetPointer(v[15]), &job->tid);
		job->fused = !null[16] && DatumGetBool(v[16]);
		job->dependent = !null[17] && DatumGetBool(v[17]);
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Claims up to "limit" due jobs and commits them as InProgress.  The jobs
 * are copied into batch_context.
 *
 * Or, if "fused" and no operation with max_concurrency is among those
 * claimed, a fused claim (claim.c's statement, run directly): the jobs are
 * locked, not changed, and the claim's transaction stays open as the batch
 * that runs them (run_claimed) and commits their outcomes (batch_commit).  That
 * saves each job an UPDATE, and the claim a commit.  Meanwhile the jobs
 * look waiting to everyone else; other workers skip them (SKIP LOCKED),
 * and a cancel or pause waits for the batch, then finds the job done.  The
 * batch's jobs are run in it, or not at all: once it commits (by size or
 * age) the others are free again (RUN_RELEASED).
 */
static int
claim_jobs(AsyncJob **jobs, int limit, bool fused)
{
	Datum		args[8];
	char		nulls[8] = {' ', ' ', ' ', 'n', 'n', 'n', 'n', ' '};
	bool		claim_fused;
	bool		capped;
	bool		told = false;	/* to forget the watermarks */
	MemoryContext callercxt = CurrentMemoryContext; /* not a transaction's */
	int			rc;
	int			n;
	int			i;
	TimestampTz start;
	bool		full;
	Oid			claim_index;
	int64		misses;
	int64		buffers;

	/* told that jobs may wait before the watermarks: forget them */
	if (pg_atomic_exchange_u32(&MySlot->fronts_reset, 0) != 0 &&
		n_watermarks > 0)
	{
		n_watermarks = 0;
		MemoryContextReset(watermark_context);
		told = true;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();

	/* starting the transaction took in invalidations: is the extension gone? */
	if (extension_check_needed)
	{
		extension_check_needed = false;
		if (!OidIsValid(get_extension_oid(ASYNCJOBS_EXTENSION, true)))
		{
			CommitTransactionCommand();
			MySlot->exit_reason = EXIT_NO_EXTENSION;
			proc_exit(0);
		}
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	debug_query_string = "asyncjobs claim";
	pgstat_report_activity(STATE_RUNNING, "asyncjobs claim");

	if (claim_plan == NULL)
	{
		Oid			types[8] = {INT8OID, TEXTOID, INT4OID, TEXTARRAYOID,
		INT4ARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID, BOOLOID};

		claim_plan = asyncjobs_prepare_kept("SELECT * FROM asyncjobs._claim($1, $2, $3, "
											"after_ops => $4, after_priority => $5, "
											"after_runafter => $6, after_id => $7, "
											"lock_only => $8)",
											8, types);
	}

	/*
	 * A fused claim runs the claim's statement directly (claim.c); its
	 * arguments 4 to 7, the watermarks, are asyncjobs._claim's.
	 */
	args[0] = Int32GetDatum(limit);
	nulls[1] = 'n';				/* all operations */
	args[2] = BoolGetDatum(false);	/* not external */
	args[7] = BoolGetDatum(true);	/* fused */

	/*
	 * From the watermarks; from the start at least every poll interval, by
	 * turns with the other workers while claims are expensive.
	 */
	start = GetCurrentTimestamp();
	if (n_watermarks == 0 || asyncjobs_claim_watermark_threshold == 0)
		full = true;		/* none yet, told to forget them, or off */
	else if (MySlot->watermark_mode)
		full = full_claim_due(start);
	else
		full = TimestampDifferenceExceeds(last_full_claim, start,
										  asyncjobs_poll_interval);
	if (full)
		last_full_claim = start;
	else
		watermark_args(args, nulls);

	if (!OidIsValid(claim_index_relid))
		claim_index_relid = get_relname_relid("job_claim_idx",
											  get_namespace_oid(ASYNCJOBS_SCHEMA, true));
	claim_index = claim_index_relid;
	misses = claim_index_misses(claim_index);
	buffers = pgBufferUsage.shared_blks_hit + pgBufferUsage.shared_blks_read;
	capped = false;
	n = fused ? asyncjobs_claim_scan(args, nulls, batch_context, jobs, &capped) : 0;

	/*
	 * Not fused, or a fused claim met an operation with max_concurrency:
	 * asyncjobs._claim, which takes the caps' advisory locks and decides.
	 */
	if (!fused || capped)
	{
		args[0] = Int64GetDatum(MyWorkerId);
		nulls[1] = ' ';
		args[1] = CStringGetTextDatum(MyHostId);
		args[2] = Int32GetDatum(limit);
		args[7] = BoolGetDatum(fused);
		rc = SPI_execute_plan(claim_plan, args, nulls, false, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "asyncjobs claim failed: %s", SPI_result_code_string(rc));
		n = (int) SPI_processed;
		if (n > 0 && SPI_tuptable->tupdesc->natts != AJ_CLAIM_COLUMNS)
			elog(ERROR, "asyncjobs._claim returned %d columns, not %d",
				 SPI_tuptable->tupdesc->natts, AJ_CLAIM_COLUMNS);
		jobs_from_claim(jobs, n);
	}
	if (full)
		full_claim_us = GetCurrentTimestamp() - start;
	buffers = pgBufferUsage.shared_blks_hit + pgBufferUsage.shared_blks_read - buffers;
	misses = claim_index_misses(claim_index) - misses;
	claim_count++;
	claim_fused = n > 0 && (*jobs)[0].fused;

	PopActiveSnapshot();
	SPI_finish();

	if (claim_fused)
	{
		/* the batch that runs the jobs; the file as for a claim (inflight.c) */
		asyncjobs_inflight_record(*jobs, n, true);
		batch_adopt_claim();
		/* out of the transaction's memory, as after a commit */
		MemoryContextSwitchTo(callercxt);
	}
	else
	{
		/*
		 * The claim commits without waiting for its WAL to reach the disk:
		 * the jobs' outcomes commit later in a transaction that does wait,
		 * and that flush covers this commit too.  A crash before then undoes
		 * the claim along with the jobs' effects; the file written here lets
		 * the next worker count the jobs' loss all the same (inflight.c).
		 */
		if (n > 0)
		{
			asyncjobs_inflight_record(*jobs, n, false);
			(void) set_config_option("synchronous_commit", "off", PGC_SUSET,
									 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
		}
		CommitTransactionCommand();
	}
	debug_query_string = NULL;

	/* the jobs are ours: move the watermarks past them */
	for (i = 0; i < n; i++)
		watermark_note((*jobs)[i].operation, (*jobs)[i].priority,
					   (*jobs)[i].runafter, (*jobs)[i].id);
	watermark_decide(full ? (told ? "the start (told)" : "the start") :
					 "the watermarks", full, start, misses, buffers, n);
	watermark_publish();
	return n;
}

/*
 * A job this worker claimed waits again: its operation's watermark moves
 * back to just before it, so that the next claim takes it.
 */
static void
watermark_lower(const AsyncJob *job)
{
	int			i;

	for (i = 0; i < n_watermarks; i++)
	{
		ClaimWatermark *wm = &watermarks[i];

		if (strcmp(wm->operation, job->operation) != 0)
			continue;
		if (wm->priority > job->priority ||
			(wm->priority == job->priority &&
			 (wm->runafter > job->runafter ||
			  (wm->runafter == job->runafter && wm->id >= job->id))))
		{
			/* claims start after the watermark: after id - 1 is at id */
			wm->priority = job->priority;
			wm->runafter = job->runafter;
			wm->id = job->id - 1;
		}
		return;
	}
	/* no watermark: its claims start from the start */
}

/*
 * Publishes the greatest of the watermarks, for enqueues to compare their
 * jobs with (shmem.c, claim fronts).
 */
static void
watermark_publish(void)
{
	int32		priority = 0;
	TimestampTz runafter = 0;
	int			i;

	for (i = 0; i < n_watermarks; i++)
		if (i == 0 || watermarks[i].priority > priority ||
			(watermarks[i].priority == priority && watermarks[i].runafter > runafter))
		{
			priority = watermarks[i].priority;
			runafter = watermarks[i].runafter;
		}
	asyncjobs_publish_front(n_watermarks > 0, priority, runafter);
}

/*
 * In watermark mode: is a claim from the start due, that is, has no worker
 * of the database in watermark mode (this one included) started one within
 * asyncjobs.poll_interval -- or, while such claims are slow, within
 * FULL_CLAIM_SPACING times the last one's run time (so that they take at
 * most about a twentieth of the pool's time, however long the horizon is
 * held back)?  If so, this worker takes the turn.
 */
static bool
full_claim_due(TimestampTz now)
{
	TimestampTz latest = 0;
	bool		due;
	int			i;
	int64		spacing_ms = Max((int64) asyncjobs_poll_interval,
								 full_claim_us * FULL_CLAIM_SPACING / 1000);

	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	for (i = 0; i < AsyncJobs->n_slots; i++)
	{
		AsyncJobsSlot *slot = &AsyncJobs->slots[i];

		if (slot->dboid == MyDatabaseId && slot->watermark_mode &&
			(slot->state == SLOT_IDLE || slot->state == SLOT_CLAIMING ||
			 slot->state == SLOT_RUNNING) &&
			slot->full_claim_at > latest)
			latest = slot->full_claim_at;
	}
	due = TimestampDifferenceExceeds(latest, now, (int) Min(spacing_ms, INT_MAX));
	if (due)
		MySlot->full_claim_at = now;
	LWLockRelease(AsyncJobs->lock);
	return due;
}

/*
 * Remembers that the current claim took the job with this claim key: the
 * operation's watermark becomes the key of the last job of it that the
 * claim took (claims return the jobs of an operation in key order).
 */
static void
watermark_note(const char *operation, int32 priority, TimestampTz runafter,
			   int64 id)
{
	ClaimWatermark *wm = NULL;
	int			i;

	for (i = 0; i < n_watermarks; i++)
	{
		if (strcmp(watermarks[i].operation, operation) == 0)
		{
			wm = &watermarks[i];
			break;
		}
	}
	if (wm == NULL)
	{
		if (n_watermarks < MAX_WATERMARKS)
			wm = &watermarks[n_watermarks++];
		else
		{
			/* the operation whose watermark moved least recently makes room */
			wm = &watermarks[0];
			for (i = 1; i < n_watermarks; i++)
				if (watermarks[i].moved < wm->moved)
					wm = &watermarks[i];
			pfree(wm->operation);
		}
		wm->operation = MemoryContextStrdup(watermark_context, operation);
		wm->moved = 0;
	}

	if (wm->moved == claim_count &&
		(wm->priority > priority ||
		 (wm->priority == priority &&
		  (wm->runafter > runafter ||
		   (wm->runafter == runafter && wm->id > id)))))
		return;					/* this claim already took a later job of it */
	wm->priority = priority;
	wm->runafter = runafter;
	wm->id = id;
	wm->moved = claim_count;
}

/*
 * Fills in _claim's after_* arguments (4 to 7) from the watermarks, in the
 * current memory context.
 */
static void
watermark_args(Datum *args, char *nulls)
{
	Datum	   *ops = palloc(sizeof(Datum) * n_watermarks);
	Datum	   *prios = palloc(sizeof(Datum) * n_watermarks);
	Datum	   *runafters = palloc(sizeof(Datum) * n_watermarks);
	Datum	   *ids = palloc(sizeof(Datum) * n_watermarks);
	int			i;

	for (i = 0; i < n_watermarks; i++)
	{
		ops[i] = CStringGetTextDatum(watermarks[i].operation);
		prios[i] = Int32GetDatum(watermarks[i].priority);
		runafters[i] = TimestampTzGetDatum(watermarks[i].runafter);
		ids[i] = Int64GetDatum(watermarks[i].id);
	}
	args[3] = PointerGetDatum(construct_array(ops, n_watermarks, TEXTOID,
											  -1, false, TYPALIGN_INT));
	args[4] = PointerGetDatum(construct_array(prios, n_watermarks, INT4OID,
											  sizeof(int32), true, TYPALIGN_INT));
	args[5] = PointerGetDatum(construct_array(runafters, n_watermarks, TIMESTAMPTZOID,
											  sizeof(TimestampTz), FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	args[6] = PointerGetDatum(construct_array(ids, n_watermarks, INT8OID,
											  sizeof(int64), FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	memset(nulls + 3, ' ', 4);
}

/*
 * Entries of the index that this backend's scans read so far without
 * finding a visible heap tuple: its pending (not yet reported) counts of
 * index tuples returned and heap tuples fetched through the index.
 */
static int64
claim_index_misses(Oid indexid)
{
	PgStat_TableStatus *stats;

	if (!OidIsValid(indexid))
		return 0;
	stats = find_tabstat_entry(indexid);
	if (stats == NULL)
		return 0;
	return stats->t_counts.t_tuples_returned - stats->t_counts.t_tuples_fetched;
}

/*
 * After a claim: a full claim decides whether the next claims use the
 * watermarks, by the entries of job_claim_idx it read for nothing.
 */
static void
watermark_decide(const char *from, bool full, TimestampTz start, int64 misses,
				 int64 buffers, int n)
{
	int64		limit;
	bool		expensive;

	ereport(DEBUG2,
			(errmsg_internal("asyncjobs worker %lld: a claim of %d jobs from %s read %lld entries of gone jobs and touched %lld buffers",
							 (long long) MyWorkerId, n, from,
							 (long long) misses, (long long) buffers)));
	if (!full)
		return;
	limit = (int64) asyncjobs_claim_watermark_threshold +
		(int64) asyncjobs_max_workers * asyncjobs_batch_size;
	expensive = asyncjobs_claim_watermark_threshold > 0 &&
		(misses > limit ||
		 (MySlot->watermark_mode &&
		  buffers > WATERMARK_LEAVE_BUFFERS + WATERMARK_LEAVE_BUFFERS_PER_JOB * n));
	/* only this worker writes its slot's watermark_mode: read without the lock */
	if (expensive == MySlot->watermark_mode)
		return;
	LWLockAcquire(AsyncJobs->lock, LW_EXCLUSIVE);
	MySlot->watermark_mode = expensive;
	MySlot->full_claim_at = start;
	LWLockRelease(AsyncJobs->lock);
	if (expensive)
		ereport(DEBUG1,
				(errmsg_internal("asyncjobs worker %lld enters claim watermark mode: a claim of %d jobs from the start read %lld entries of gone jobs (limit %lld) and touched %lld buffers",
								 (long long) MyWorkerId, n, (long long) misses,
								 (long long) limit, (long long) buffers)));
	else
		ereport(DEBUG1,
				(errmsg_internal("asyncjobs worker %lld leaves claim watermark mode: a claim of %d jobs from the start read %lld entries of gone jobs (limit %lld) and touched %lld buffers (limit %lld)",
								 (long long) MyWorkerId, n, (long long) misses,
								 (long long) limit, (long long) buffers,
								 (long long) (WATERMARK_LEAVE_BUFFERS +
											  WATERMARK_LEAVE_BUFFERS_PER_JOB * n))));
}

/*
 * Outcome batching.  The jobs of a claim run one after the other in one
 * transaction (each in a subtransaction of its own) that also records
 * their outcomes, so a job's effects and its outcome still commit
 * together; the transaction is committed after asyncjobs.batch_size jobs,
 * or once it is asyncjobs.batch_max_age old, and before anything that
 * needs a transaction of its own (a bulk delete, a cancel or pause to
 * apply).  Long jobs are claimed one at a time (see SHORT_JOB_US), so a
 * long job commits alone.  A worker that dies loses the batch it had not
 * committed: its jobs are still Locked by the dead worker and are
 * requeued, so each job's effects still exist exactly once.
 */
static bool batch_open = false;
static TimestampTz batch_opened = 0;
static int	batch_jobs = 0;
static bool batch_fused = false;	/* the open batch is a fused claim's */

/*
 * The open transaction, that of a fused claim, becomes the batch that runs
 * its jobs (see claim_jobs).
 */
static void
batch_adopt_claim(void)
{
	Assert(!batch_open);
	batch_open = true;
	batch_fused = true;
	batch_opened = GetCurrentTimestamp();
	asyncjobs_rollup_buffer(true);
}

/*
 * The jobs whose effects are in the open batch, in the order they ran: if
 * the batch has to be run again (see batch_commit), these are the jobs.
 */
static AsyncJob **batch_members = NULL;
static int	batch_nmembers = 0;
static int	batch_maxmembers = 0;

/*
 * Deferred outcomes.  A job that succeeded (the common case) does not
 * write its outcome in its subtransaction: the outcomes of the batch's
 * successful jobs are written by one set-based statement just before the
 * batch commits (flush_deferred), which costs one executor start-up per
 * batch instead of one per job.  A job's effects and its outcome still
 * commit together, in the batch's transaction.
 *
 * What the per-job statement checked at once -- that the job is still
 * InProgress, so that a cancel or pause that came meanwhile wins -- is
 * checked by the set-based statement for the whole batch.  If a job of the
 * batch was canceled or paused after it ran but before the batch's commit
 * (a narrow window, as a cancel signalled while a job runs makes that job
 * record its outcome at once), its effects cannot be taken out of the
 * batch alone: the batch is rolled back and its jobs are run again, one
 * outcome statement per job (batch_redo).
 */
typedef struct DeferredOutcome
{
	AsyncJob   *job;
	char	   *result;			/* jsonb text or NULL */
	Jsonb	   *attempt;		/* the attempt's entry */
	TimestampTz started;
	TimestampTz ended;
	double		timespan;
} DeferredOutcome;

static DeferredOutcome *deferred = NULL;
static int	ndeferred = 0;
static int	maxdeferred = 0;

/* while a batch is run again: every outcome is written at once */
static bool batch_redo = false;

static SPIPlanPtr flush_plan = NULL;

/*
 * The ids of the deferred outcomes being flushed, sorted, each with its
 * position (from 1) in the flush's arrays: asyncjobs._batch_position().
 */
typedef struct BatchPosition
{
	int64		id;
	int			position;
} BatchPosition;

static BatchPosition *batch_positions = NULL;
static int	n_batch_positions = 0;
static int	max_batch_positions = 0;

static int
batch_position_cmp(const void *a, const void *b)
{
	int64		x = ((const BatchPosition *) a)->id;
	int64		y = ((const BatchPosition *) b)->id;

	return (x > y) - (x < y);
}

/* the positions of the deferred outcomes, for the flush about to run */
static void
batch_position_set(void)
{
	int			i;

	if (ndeferred > max_batch_positions)
	{
		max_batch_positions = Max(ndeferred, 64);
		if (batch_positions)
			pfree(batch_positions);
		batch_positions = MemoryContextAlloc(TopMemoryContext,
											 sizeof(BatchPosition) * max_batch_positions);
	}
	for (i = 0; i < ndeferred; i++)
	{
		batch_positions[i].id = deferred[i].job->id;
		batch_positions[i].position = i + 1;
	}
	qsort(batch_positions, ndeferred, sizeof(BatchPosition), batch_position_cmp);
	n_batch_positions = ndeferred;
}

/* the position of a job of the flush's batch, 0 if none */
static int
batch_position(int64 id)
{
	int			lo = 0;
	int			hi = n_batch_positions - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (batch_positions[mid].id == id)
			return batch_positions[mid].position;
		if (batch_positions[mid].id < id)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return 0;
}

/*
 * asyncjobs._batch_position(id bigint) RETURNS int: in a worker's outcome
 * statement, the job's position in the batch's arrays; NULL elsewhere.
 */
PG_FUNCTION_INFO_V1(asyncjobs_batch_position);
Datum
asyncjobs_batch_position(PG_FUNCTION_ARGS)
{
	int			position = batch_position(PG_GETARG_INT64(0));

	if (position == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(position);
}

/*
 * Commits the open batch, if any, and does what follows the commit of its
 * jobs.
 */
static void
batch_commit(void)
{
	MemoryContext oldcxt;

	if (!batch_open)
		return;
	/* what the flush and the commit allocate goes with the claim's memory */
	oldcxt = MemoryContextSwitchTo(batch_context);

	if (ndeferred > 0 && !flush_deferred())
	{
		AsyncJob  **redo;
		int			nredo = batch_nmembers;
		int			i;

		if (batch_fused)
		{
			/*
			 * A fused batch cannot be run again as it is: rolled back, it no
			 * longer holds its jobs.  Nobody else can change the row of one
			 * of its jobs (it is locked); a job of the batch did (say, it
			 * canceled another job of the batch).  Roll back: the jobs wait
			 * again, their effects undone, and the next claim marks them
			 * InProgress, so that such a cancel takes its usual course.
			 */
			ereport(LOG,
					(errmsg("asyncjobs worker rolled back a fused batch of %d jobs",
							batch_nmembers),
					 errdetail("A job of the batch changed or removed the row of a job of the batch in asyncjobs.job (a cancel, say); the jobs run again, claimed InProgress.")));
			classic_next = true;
			claim_undone = true;
			AbortCurrentTransaction();
			asyncjobs_rollup_buffer(false);
			batch_open = false;
			batch_fused = false;
			batch_jobs = 0;
			batch_nmembers = 0;
			ndeferred = 0;
			debug_query_string = NULL;
			MemoryContextSwitchTo(oldcxt);
			return;
		}

		/*
		 * A job of the batch was canceled or paused after it ran: roll the
		 * whole batch back and run its jobs again, each one writing its
		 * outcome at once (the canceled or paused one then ends as asked).
		 */
		ereport(LOG,
				(errmsg("asyncjobs worker runs a batch of %d jobs again", nredo),
				 errdetail("A job of the batch was canceled or paused after it ran, before the batch committed.")));
		redo = palloc(sizeof(AsyncJob *) * nredo);
		memcpy(redo, batch_members, sizeof(AsyncJob *) * nredo);
		AbortCurrentTransaction();
		batch_open = false;
		batch_jobs = 0;
		batch_nmembers = 0;
		ndeferred = 0;
		debug_query_string = NULL;

		/* a batch_seq that differs: each job's state is checked first */
		batch_redo = true;
		PG_TRY();
		{
			for (i = 0; i < nredo; i++)
				run_claimed(redo[i],
							pg_atomic_read_u32(&MySlot->control_seq) - 1);
			batch_commit();
		}
		PG_FINALLY();
		{
			batch_redo = false;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(oldcxt);
		return;
	}

	/* the monitoring rollups of the batch's jobs, in its transaction */
	asyncjobs_rollup_flush();
	asyncjobs_rollup_buffer(false);
	CommitTransactionCommand();
	batch_open = false;
	batch_fused = false;
	batch_nmembers = 0;
	debug_query_string = NULL;

	MySlot->jobs_done += batch_jobs;
	batch_jobs = 0;
	/* wake the sessions in asyncjobs.wait() */
	ConditionVariableBroadcast(&AsyncJobs->completion_cv);
	pgstat_report_stat(false);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Writes the deferred outcomes of the open batch with one statement, in the
 * batch's transaction.  Returns false if a job among them was no longer
 * InProgress (canceled or paused after it ran): then the batch must not
 * commit.
 */
static bool
flush_deferred(void)
{
	Datum	   *results = palloc(sizeof(Datum) * ndeferred);
	bool	   *result_nulls = palloc(sizeof(bool) * ndeferred);
	Datum	   *starts = palloc(sizeof(Datum) * ndeferred);
	Datum	   *ends = palloc(sizeof(Datum) * ndeferred);
	Datum	   *spans = palloc(sizeof(Datum) * ndeferred);
	Datum	   *attempts = palloc(sizeof(Datum) * ndeferred);
	Datum	   *tids = palloc(sizeof(Datum) * ndeferred);
	bool	   *written = palloc0(sizeof(bool) * ndeferred);
	int			dims[1] = {ndeferred};
	int			lbs[1] = {1};
	Datum		args[8];
	int			rc;
	int			i;
	bool		ok = true;

	for (i = 0; i < ndeferred; i++)
	{
		DeferredOutcome *d = &deferred[i];

		result_nulls[i] = (d->result == NULL);
		results[i] = d->result ? CStringGetTextDatum(d->result) : (Datum) 0;
		starts[i] = TimestampTzGetDatum(d->started);
		ends[i] = TimestampTzGetDatum(d->ended);
		spans[i] = Float8GetDatum(d->timespan);
		attempts[i] = JsonbPGetDatum(d->attempt);
		tids[i] = PointerGetDatum(&d->job->tid);
	}
	args[0] = PointerGetDatum(construct_md_array(results, result_nulls, 1, dims, lbs,
												 TEXTOID, -1, false, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(starts, ndeferred, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[2] = PointerGetDatum(construct_array(ends, ndeferred, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(spans, ndeferred, FLOAT8OID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[4] = PointerGetDatum(construct_array(attempts, ndeferred, JSONBOID, -1,
											  false, TYPALIGN_INT));
	args[5] = PointerGetDatum(construct_array(tids, ndeferred, TIDOID,
											  sizeof(ItemPointerData), false,
											  TYPALIGN_SHORT));
	args[6] = BoolGetDatum(batch_fused);
	args[7] = CStringGetTextDatum(MyHostId);
	batch_position_set();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	debug_query_string = "asyncjobs outcomes";
	pgstat_report_activity(STATE_RUNNING, "asyncjobs outcomes");

	if (flush_plan == NULL)
	{
		Oid			types[8] = {TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TIMESTAMPTZARRAYOID, FLOAT8ARRAYOID, JSONBARRAYOID, TIDARRAYOID,
		BOOLOID, TEXTOID};

		/*
		 * finish_direct_plan for many jobs that succeeded (keep the two
		 * alike): each takes its outcome from the arrays at its id's
		 * position in the batch (asyncjobs._batch_position: a binary
		 * search, where array_position and "= ANY" over the ids cost the
		 * flush of n jobs n * n comparisons).  The rows are found by the
		 * tuple ids the claim returned (a Tid Scan), not by a search of
		 * the primary key per job.  A row that changed since (a cancel or
		 * pause) is at another tuple id and fails the statuscode test
		 * anyway; the id test keeps a tuple id that came to hold another
		 * row (VACUUM FULL between claim and batch) from matching.  A row
		 * not found here gets its outcome by id, on its own (below), as a
		 * recurring job does.  In a fused batch ($7) the rows are not
		 * InProgress but locked by this transaction since the claim:
		 * nobody else changed them, and the worker's host is written here.
		 */
		flush_plan = asyncjobs_prepare_kept(
			"WITH d AS (DELETE FROM asyncjobs.job j "
			"       WHERE j.ctid OPERATOR(pg_catalog.=) ANY ($6) "
			"         AND asyncjobs._batch_position(j.asyncoperationid) IS NOT NULL "
			"         AND ($7 OR j.statuscode OPERATOR(pg_catalog.=) 20) "
			"         AND j.recurrencepattern IS NULL "
			"      RETURNING j.*, asyncjobs._batch_position(j.asyncoperationid) AS i) "
			INSERT_HISTORY
			"SELECT d.asyncoperationid, d.name, d.operationtype, d.messagename, 3, "
			"  30, d.ownerid, d.createdon, pg_catalog.clock_timestamp(), "
			"  $2[d.i], $3[d.i], d.postponeuntil, $4[d.i], "
			"  d.retrycount, d.maxretries, NULL, NULL, NULL, d.data, "
			"  $1[d.i]::pg_catalog.jsonb, d.priority, d.depth, "
			"  d.correlationid, d.correlationupdatedtime, d.dependencytoken, "
			"  d.dedupekey, d.recurrencepattern, d.recurrencestarttime, "
			"  d.regardingobjectid, CASE WHEN $7 THEN $8 ELSE d.hostid END, d.parentid, "
			"  d.attempts OPERATOR(pg_catalog.||) $5[d.i] "
			"FROM d RETURNING asyncoperationid, messagename, ownerid::pg_catalog.oid, "
			"  executiontimespan",
			8, types);
	}

	rc = SPI_execute_plan(flush_plan, args, NULL, false, 0);
	if (rc != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "asyncjobs could not record the outcomes of a batch: %s",
			 SPI_result_code_string(rc));

	/* the rollups of the jobs written; which jobs they were */
	for (i = 0; i < (int) SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Oid			owner = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		double		ts = DatumGetFloat8(SPI_getbinval(tup, desc, 4, &isnull));
		int			j = batch_position(id) - 1;

		if (j >= 0)
		{
			written[j] = true;
			asyncjobs_rollup_event(deferred[j].job->operation, owner,
								   AJ_STATUS_SUCCEEDED, !isnull, ts, 0, false);
		}
	}
	n_batch_positions = 0;
	PopActiveSnapshot();
	SPI_finish();

	/*
	 * The others recur (asyncjobs._finish queues their next occurrence),
	 * or are no longer InProgress.
	 */
	for (i = 0; i < ndeferred && ok; i++)
	{
		AsyncJobOutcome outcome;

		if (written[i])
			continue;
		memset(&outcome, 0, sizeof(outcome));
		outcome.succeeded = true;
		outcome.result = deferred[i].result;
		outcome.started = deferred[i].started;
		outcome.ended = deferred[i].ended;
		ok = asyncjobs_record_outcome(deferred[i].job, &outcome);
	}
	ndeferred = 0;
	debug_query_string = NULL;
	return ok;
}

/*
 * Runs one claimed job in the open batch (opening one if needed), in a
 * subtransaction that also records its outcome.
 *
 * A cancel or pause asked while the worker holds the job wins: if one was
 * signalled since the batch was claimed (batch_seq), the job's state is
 * checked before it starts; and the outcome is only written while the job
 * is still InProgress, so a job canceled or paused while it ran has its
 * subtransaction rolled back (its effects with it) and ends Canceled or
 * Paused instead.
 */
static RunResult
run_claimed(AsyncJob *job, uint32 batch_seq)
{
	AsyncJobOutcome outcome;
	MemoryContext oldcxt = CurrentMemoryContext;	/* not a transaction's */
	ResourceOwner oldowner;
	bool		recorded;

	CHECK_FOR_INTERRUPTS();

	job->control_seq = pg_atomic_read_u32(&MySlot->control_seq);

	/*
	 * A job of a fused claim is ours while its batch is open only, and runs
	 * in it or not at all: not after the batch committed, nor when it would
	 * have to commit first (a bulk delete runs transactions of its own; a
	 * cancel or pause signalled to this worker is checked between batches).
	 */
	if (job->fused)
	{
		if (!batch_open)
			return RUN_RELEASED;
		if (job->control_seq != batch_seq ||
			job->operationtype == AJ_OPTYPE_BULK_DELETE)
		{
			batch_commit();
			return RUN_CLASSIC;
		}
	}

	if (job->control_seq != batch_seq)
	{
		batch_commit();
		if (asyncjobs_apply_control(job, NULL) >= 0)
			return RUN_DONE;
	}

	MySlot->job_id = job->id;
	strlcpy(MySlot->operation, job->operation, NAMEDATALEN);
	MySlot->since = GetCurrentTimestamp();

	/* a bulk delete commits batch by batch: it runs its own transactions */
	if (job->operationtype == AJ_OPTYPE_BULK_DELETE)
	{
		batch_commit();
		asyncjobs_run_bulk_delete(job, batch_context);
		finish_job_run();
		MySlot->jobs_done++;
		ConditionVariableBroadcast(&AsyncJobs->completion_cv);
		return RUN_DONE;
	}

	SetCurrentStatementStartTimestamp();
	if (!batch_open)
	{
		StartTransactionCommand();
		batch_open = true;
		batch_opened = GetCurrentTimestamp();
		asyncjobs_rollup_buffer(true);
	}
	MemoryContextSwitchTo(batch_context);
	oldowner = CurrentResourceOwner;
	debug_query_string = job->operation;
	pgstat_report_activity(STATE_RUNNING, job->operation);
	asyncjobs_current_job_id = job->id;
	asyncjobs_loop_detected = false;
	asyncjobs_trace_reset();

	/* the job and its outcome: rolled back together if it was canceled */
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(batch_context);

	/* returns with cancel interrupts held off: see executor.c */
	asyncjobs_run_job(job, &outcome);
	asyncjobs_current_job_id = 0;

	if (outcome.yielded)
	{
		/*
		 * It ran longer than a job of a fused batch may: undone, as if never
		 * run, it waits again with the batch's jobs not yet run, once the
		 * batch (those that did run) commits; claimed the usual way next.
		 */
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(batch_context);
		CurrentResourceOwner = oldowner;
		asyncjobs_reset_session_state();
		ereport(DEBUG1,
				(errmsg("asyncjobs job %lld (%s) ran longer than %d ms in a fused batch: it runs again on its own",
						(long long) job->id, job->operation, AJ_FUSED_JOB_LIMIT_MS)));
		batch_commit();
		finish_job_run();
		MemoryContextSwitchTo(oldcxt);
		QueryCancelPending = false;
		RESUME_CANCEL_INTERRUPTS();
		return RUN_CLASSIC;
	}

	recorded = record_or_defer(job, &outcome);
	if (recorded)
	{
		if (batch_nmembers == batch_maxmembers)
		{
			batch_maxmembers = Max(64, batch_maxmembers * 2);
			batch_members = batch_members == NULL ?
				MemoryContextAlloc(TopMemoryContext, sizeof(AsyncJob *) * batch_maxmembers) :
				repalloc(batch_members, sizeof(AsyncJob *) * batch_maxmembers);
		}
		batch_members[batch_nmembers++] = job;
		asyncjobs_reset_session_state();
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(batch_context);
		CurrentResourceOwner = oldowner;
		batch_jobs++;
		finish_job_run();
		if (batch_jobs >= asyncjobs_batch_size ||
			TimestampDifferenceExceeds(batch_opened, GetCurrentTimestamp(),
									   asyncjobs_batch_max_age))
			batch_commit();
	}
	else
	{
		/* canceled or paused meanwhile: nothing of the job may remain */
		char	   *attempt = asyncjobs_attempt_json(job, &outcome, "interrupted");

		attempt = MemoryContextStrdup(batch_context, attempt);
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(batch_context);
		CurrentResourceOwner = oldowner;
		batch_commit();
		(void) asyncjobs_apply_control(job, attempt);
		finish_job_run();
		MySlot->jobs_done++;
		ConditionVariableBroadcast(&AsyncJobs->completion_cv);
	}
	MemoryContextSwitchTo(oldcxt);

	/* a cancel aimed at this job has nothing left to cancel */
	QueryCancelPending = false;
	RESUME_CANCEL_INTERRUPTS();
	return RUN_DONE;
}

/*
 * Writes the outcome of a job that ran in the open batch, or defers it to
 * the batch's set-based statement (see DeferredOutcome): a job that
 * succeeded, with no trace to write, and no cancel or pause signalled to
 * this worker while it ran.  Returns false when the job is no longer
 * InProgress (see asyncjobs_record_outcome).
 */
static bool
record_or_defer(AsyncJob *job, AsyncJobOutcome *outcome)
{
	DeferredOutcome *d;

	if (batch_redo || !outcome->succeeded ||
		asyncjobs_trace_level == TRACE_LEVEL_ALL ||
		pg_atomic_read_u32(&MySlot->control_seq) != job->control_seq)
		return asyncjobs_record_outcome(job, outcome);

	if (ndeferred == maxdeferred)
	{
		maxdeferred = Max(64, maxdeferred * 2);
		deferred = deferred == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(DeferredOutcome) * maxdeferred) :
			repalloc(deferred, sizeof(DeferredOutcome) * maxdeferred);
	}
	d = &deferred[ndeferred++];
	d->job = job;
	d->result = outcome->result;
	d->attempt = success_attempt(job, outcome);
	d->started = outcome->started;
	d->ended = outcome->ended;
	d->timespan = (double) (outcome->ended - outcome->started) / USECS_PER_SEC;
	return true;
}

/*
 * The statuscode a job of the open batch ended with but has not written
 * yet (a deferred outcome: Succeeded), or -1.  For asyncjobs.wait() called
 * by a later job of the same batch, which would otherwise find the job
 * InProgress until the batch commits, after the caller's own end.
 */
int
asyncjobs_deferred_status(int64 job_id)
{
	int			i;

	for (i = 0; i < ndeferred; i++)
		if (deferred[i].job->id == job_id)
			return AJ_STATUS_SUCCEEDED;
	return -1;
}

/*
 * What follows every job, however it ran.  (Counting it done, and waking
 * the sessions that wait for jobs, follow the commit: see batch_commit.)
 */
static void
finish_job_run(void)
{
	/* session-level advisory locks the job took outlive its transaction */
	LockReleaseSession(USER_LOCKMETHOD);

	MySlot->job_id = 0;
	MySlot->operation[0] = '\0';
}

/*
 * In a transaction of its own, ends a job that was canceled or paused while
 * this worker held it.  Returns the job's new statuscode, or -1 when it was
 * not Canceling or Pausing (it is still ours to run).
 */
int
asyncjobs_apply_control(AsyncJob *job, const char *attempt)
{
	static SPIPlanPtr plan = NULL;
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;
	int			result = -1;
	Datum		d;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (plan == NULL)
	{
		Oid			types[2] = {INT8OID, JSONBOID};

		plan = asyncjobs_prepare_kept("SELECT asyncjobs._control_outcome($1, $2)", 2, types);
	}
	args[0] = Int64GetDatum(job->id);
	if (attempt)
		args[1] = DirectFunctionCall1(jsonb_in, CStringGetDatum(attempt));
	else
		nulls[1] = 'n';
	if (SPI_execute_plan(plan, args, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "asyncjobs could not apply the cancel or pause of job %lld",
			 (long long) job->id);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		result = DatumGetInt16(d);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();

	if (result >= 0)
	{
		ereport(LOG,
				(errmsg("asyncjobs job %lld (%s) %s", (long long) job->id,
						job->operation,
						result == AJ_STATUS_CANCELED ? "canceled" : "paused")));
		ConditionVariableBroadcast(&AsyncJobs->completion_cv);
	}
	return result;
}

/*
 * Writes the outcome of a job in the current transaction: Succeeded or
 * Failed (moved to history), or back to wait for a retry.  Returns false,
 * writing nothing, when the job is no longer InProgress (canceled or
 * paused meanwhile).
 */
bool
asyncjobs_record_outcome(AsyncJob *job, AsyncJobOutcome *outcome)
{
	double		timespan = (double) (outcome->ended - outcome->started) / USECS_PER_SEC;
	bool		retry = false;
	char	   *sqlstate = NULL;
	int			rc;
	bool		applied;
	bool		isnull;

	if (!outcome->succeeded)
	{
		sqlstate = pstrdup(unpack_sql_state(outcome->sqlerrcode));
		retry = asyncjobs_error_is_transient(outcome->sqlerrcode) &&
			job->retrycount < job->maxretries;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());

	/* while the job's row is still in the active table */
	if (asyncjobs_trace_level == TRACE_LEVEL_ALL ||
		(asyncjobs_trace_level == TRACE_LEVEL_EXCEPTION && !outcome->succeeded))
		write_trace(job, outcome);

	if (finish_plan == NULL)
	{
		Oid			ftypes[11] = {INT8OID, INT2OID, JSONBOID, TIMESTAMPTZOID,
		FLOAT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BOOLOID, TEXTOID};
		Oid			rtypes[9] = {INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		FLOAT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BOOLOID};

		/*
		 * $10 (and $9 of retry_plan): the job is of a fused batch, not
		 * InProgress but locked by this transaction since its claim; $11
		 * the worker's host, written to history for it.
		 */
		finish_plan = asyncjobs_prepare_kept("SELECT asyncjobs._finish($1, $2, $3, $4, $5, $6, $7, $8, $9, "
											 "CASE WHEN $10 THEN NULL ELSE 20 END::pg_catalog.int2)",
											 11, ftypes);

		/*
		 * The same as asyncjobs._finish() (keep the two alike) for a job
		 * that does not recur, as one statement without the PL/pgSQL
		 * call: it is most of a short job's cost.  Returns the row's operation and owner for the
		 * rollups; no row when the job recurs (then _finish() queues the
		 * next occurrence) or is no longer InProgress.
		 */
		finish_direct_plan = asyncjobs_prepare_kept(
			"WITH d AS (DELETE FROM asyncjobs.job "
			"            WHERE asyncoperationid = $1 AND ($10 OR statuscode = 20) "
			"              AND recurrencepattern IS NULL RETURNING *) "
			INSERT_HISTORY
			"SELECT d.asyncoperationid, d.name, d.operationtype, d.messagename, 3, "
			"  $2, d.ownerid, d.createdon, pg_catalog.clock_timestamp(), "
			"  coalesce($4, d.startedon), pg_catalog.clock_timestamp(), "
			"  d.postponeuntil, coalesce($5, d.executiontimespan), "
			"  d.retrycount, d.maxretries, $6, $7, $8, d.data, $3, d.priority, d.depth, "
			"  d.correlationid, d.correlationupdatedtime, d.dependencytoken, "
			"  d.dedupekey, d.recurrencepattern, d.recurrencestarttime, "
			"  d.regardingobjectid, CASE WHEN $10 THEN $11 ELSE d.hostid END, d.parentid, "
			"  CASE WHEN $9 IS NULL THEN d.attempts ELSE d.attempts OPERATOR(pg_catalog.||) $9 END "
			"FROM d RETURNING messagename, ownerid::pg_catalog.oid, executiontimespan",
			11, ftypes);
		retry_plan = asyncjobs_prepare_kept("SELECT asyncjobs._retry_later($1, $2, $3, $4, $5, $6, $7, $8, "
											"CASE WHEN $9 THEN NULL ELSE 20 END::pg_catalog.int2)",
											9, rtypes);
	}

	if (retry)
	{
		Datum		args[9];
		char		nulls[9] = "         ";
		int64		delay = asyncjobs_backoff_ms(job->retrycount,
												 job->retry_delay_ms,
												 job->retry_delay_max_ms);

		args[0] = Int64GetDatum(job->id);
		args[1] = TimestampTzGetDatum(TimestampTzPlusMilliseconds(outcome->ended, delay));
		args[2] = TimestampTzGetDatum(outcome->started);
		args[3] = Float8GetDatum(timespan);
		args[4] = CStringGetTextDatum(sqlstate);
		args[5] = CStringGetTextDatum(outcome->message);
		args[6] = CStringGetTextDatum(outcome->friendly);
		args[7] = DirectFunctionCall1(jsonb_in,
									  CStringGetDatum(asyncjobs_attempt_json(job, outcome, "retry")));
		args[8] = BoolGetDatum(job->fused);
		rc = SPI_execute_plan(retry_plan, args, nulls, false, 0);
	}
	else
	{
		Datum		args[11];
		char		nulls[11] = "           ";

		args[0] = Int64GetDatum(job->id);
		args[1] = Int16GetDatum(outcome->succeeded ? AJ_STATUS_SUCCEEDED : AJ_STATUS_FAILED);
		if (outcome->result)
			args[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(outcome->result));
		else
			nulls[2] = 'n';
		args[3] = TimestampTzGetDatum(outcome->started);
		args[4] = Float8GetDatum(timespan);
		if (outcome->succeeded)
			nulls[5] = nulls[6] = nulls[7] = 'n';
		else
		{
			args[5] = CStringGetTextDatum(sqlstate);
			args[6] = CStringGetTextDatum(outcome->message);
			args[7] = CStringGetTextDatum(outcome->friendly);
		}
		args[8] = DirectFunctionCall1(jsonb_in,
									  CStringGetDatum(asyncjobs_attempt_json(job, outcome,
																   outcome->succeeded ? "succeeded" : "failed")));
		args[9] = BoolGetDatum(job->fused);
		args[10] = CStringGetTextDatum(MyHostId);
		rc = SPI_execute_plan(finish_direct_plan, args, nulls, false, 0);
		if (rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "asyncjobs could not record the outcome of job %lld: %s",
				 (long long) job->id, SPI_result_code_string(rc));
		if (SPI_processed == 1)
		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		tsnull;
			double		ts = DatumGetFloat8(SPI_getbinval(tup, desc, 3, &tsnull));

			asyncjobs_rollup_event(SPI_getvalue(tup, desc, 1),
								   DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull)),
								   outcome->succeeded ? AJ_STATUS_SUCCEEDED : AJ_STATUS_FAILED,
								   !tsnull, ts, 0,
								   sqlstate != NULL && strcmp(sqlstate, "AJ002") == 0);
			PopActiveSnapshot();
			SPI_finish();
			goto applied_outcome;
		}
		/* a recurring job, or one no longer InProgress */
		rc = SPI_execute_plan(finish_plan, args, nulls, false, 0);
	}
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "asyncjobs could not record the outcome of job %lld: %s",
			 (long long) job->id, SPI_result_code_string(rc));
	applied = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));

	PopActiveSnapshot();
	SPI_finish();

	if (!applied)
		return false;

applied_outcome:
	if (!outcome->succeeded)
		ereport(retry ? LOG : WARNING,
				(errmsg("asyncjobs job %lld (%s) failed: %s",
						(long long) job->id, job->operation, outcome->friendly),
				 retry ? errdetail("The error is transient; retry %d of %d follows.",
								   job->retrycount + 1, job->maxretries)
				 : errdetail("The job ended Failed after %d retries.", job->retrycount),
				 retry ? 0 : errhint("Look up the job with SELECT * FROM asyncjobs.asyncoperation WHERE asyncoperationid = %lld.",
									 (long long) job->id)));
	return true;
}

/*
 * Writes the attempt's trace lines and exception to asyncjobs.plugintracelog
 * (inside record_outcome's SPI connection).
 */
static void
write_trace(AsyncJob *job, AsyncJobOutcome *outcome)
{
	static SPIPlanPtr plan = NULL;
	const char *lines = asyncjobs_trace_text();
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	if (plan == NULL)
	{
		Oid			types[5] = {INT8OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INT4OID};

		plan = asyncjobs_prepare_kept("INSERT INTO asyncjobs.plugintracelog "
							"(asyncoperationid, typename, messagename, depth, correlationid, "
							" messageblock, exceptiondetails, performanceexecutionstarttime, "
							" performanceexecutionduration, createdon) "
							"SELECT j.asyncoperationid, j.messagename, "
							" coalesce(j.data->>'event', j.messagename), j.depth, "
							" j.correlationid, $2, $3, $4, $5, pg_catalog.clock_timestamp() "
							"FROM asyncjobs.job j WHERE j.asyncoperationid = $1",
							5, types);
	}
	args[0] = Int64GetDatum(job->id);
	if (lines)
		args[1] = CStringGetTextDatum(asyncjobs_trace_truncated()
									  ? psprintf("[older lines dropped: at most 10 kB are kept]\n%s", lines)
									  : lines);
	else
		nulls[1] = 'n';
	if (!outcome->succeeded)
		args[2] = CStringGetTextDatum(outcome->message);
	else
		nulls[2] = 'n';
	args[3] = TimestampTzGetDatum(outcome->started);
	args[4] = Int32GetDatum((int32) Min((outcome->ended - outcome->started) / 1000, (int64) INT_MAX));
	if (SPI_execute_plan(plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "asyncjobs could not write the trace of job %lld", (long long) job->id);
}

/*
 * The attempts entry of a job that succeeded, as asyncjobs_attempt_json
 * writes it, built as jsonb: the batch's outcome statement takes it as it
 * is, where parsing the text was a twentieth of a short job's time.
 */
static Jsonb *
success_attempt(AsyncJob *job, AsyncJobOutcome *outcome)
{
	JsonbParseState *state = NULL;
	JsonbValue	v;

	/* keys in jsonb's order (by length, then bytes): no reordering */
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	push_jsonb_string(&state, WJB_KEY, "ended");
	push_jsonb_string(&state, WJB_VALUE, timestamptz_to_str(outcome->ended));
	push_jsonb_string(&state, WJB_KEY, "worker");
	push_jsonb_string(&state, WJB_VALUE, MyHostId);
	push_jsonb_string(&state, WJB_KEY, "attempt");
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(job->retrycount + 1);
	(void) pushJsonbValue(&state, WJB_VALUE, &v);
	push_jsonb_string(&state, WJB_KEY, "outcome");
	push_jsonb_string(&state, WJB_VALUE, "succeeded");
	push_jsonb_string(&state, WJB_KEY, "started");
	push_jsonb_string(&state, WJB_VALUE, timestamptz_to_str(outcome->started));
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

static void
push_jsonb_string(JsonbParseState **state, JsonbIteratorToken token,
				  const char *str)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = pstrdup(str);
	v.val.string.len = strlen(str);
	(void) pushJsonbValue(state, token, &v);
}

/*
 * One attempt's entry in the job's attempts history.
 */
char *
asyncjobs_attempt_json(AsyncJob *job, AsyncJobOutcome *outcome, const char *kind)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"attempt\": %d, \"outcome\": \"%s\", \"started\": ",
					 job->retrycount + 1, kind);
	escape_json(&buf, timestamptz_to_str(outcome->started));
	appendStringInfoString(&buf, ", \"ended\": ");
	escape_json(&buf, timestamptz_to_str(outcome->ended));
	appendStringInfo(&buf, ", \"worker\": ");
	escape_json(&buf, MyHostId);
	if (!outcome->succeeded)
	{
		appendStringInfoString(&buf, ", \"errorcode\": ");
		escape_json(&buf, unpack_sql_state(outcome->sqlerrcode));
		appendStringInfoString(&buf, ", \"message\": ");
		escape_json(&buf, outcome->friendly);
		if (outcome->detail)
		{
			appendStringInfoString(&buf, ", \"detail\": ");
			escape_json(&buf, outcome->detail);
		}
		if (outcome->hint)
		{
			appendStringInfoString(&buf, ", \"hint\": ");
			escape_json(&buf, outcome->hint);
		}
		if (outcome->context)
		{
			appendStringInfoString(&buf, ", \"context\": ");
			escape_json(&buf, outcome->context);
		}
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Runs a housekeeping statement in a transaction of its own.  It must not
 * hold up the jobs: it waits for locks at most a second, and a failure is
 * logged and tried again at the next round instead of ending the worker.
 */
static bool
run_maintenance(const char *sql)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		debug_query_string = sql;
		pgstat_report_activity(STATE_RUNNING, sql);
		(void) set_config_option("lock_timeout", "1000", PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
		if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "asyncjobs maintenance failed: %s", sql);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		HOLD_INTERRUPTS();
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		RESUME_INTERRUPTS();
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	debug_query_string = NULL;
	pgstat_report_activity(STATE_IDLE, NULL);
	return ok;
}
