/*-------------------------------------------------------------------------
 *
 * asyncjobs.h
 *	  Declarations shared by the asyncjobs source files.
 *
 * asyncjobs is split by concern:
 *	  module.c		_PG_init, settings, hooks
 *	  shmem.c		shared state: the worker slots, wake-ups, the launcher's inbox
 *	  launcher.c	the launcher background worker (one per server)
 *	  worker.c		the per-database worker loop: claim, run, requeue
 *	  claim.c		the claim's choice of jobs, one prepared statement
 *	  inflight.c	the claims a crash could undo, in a file per worker
 *	  executor.c	runs one job as its owner and captures its outcome
 *	  retry.c		transient / permanent classification and backoff
 *	  api.c			SQL-callable functions (register, enqueue, wait, ...)
 *	  utility.c		keeps workers out of the way of DROP / RENAME DATABASE
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#ifndef ASYNCJOBS_H
#define ASYNCJOBS_H

#include "postgres.h"

#include "compat.h"
#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/jsonb.h"

#define ASYNCJOBS_EXTENSION		"asyncjobs"
#define ASYNCJOBS_SCHEMA		"asyncjobs"

/* SQLSTATE a handler raises to ask for a retry ("AJ001") */
#define ERRCODE_ASYNCJOBS_RETRY		MAKE_SQLSTATE('A','J','0','0','1')
/* SQLSTATE of an infinite loop of jobs enqueueing jobs ("AJ002") */
#define ERRCODE_ASYNCJOBS_LOOP		MAKE_SQLSTATE('A','J','0','0','2')
/*
 * Recorded (not raised) by the SQL side: AJ003, a permanent failure an
 * external worker reported; AJ004, an external worker's lease expired;
 * AJ005, a step's job canceled by the per-row limit (16 runs an hour).
 */

/* Dataverse state and status codes (DESIGN section 3) */
#define AJ_STATE_READY			0
#define AJ_STATE_SUSPENDED		1
#define AJ_STATE_LOCKED			2
#define AJ_STATE_COMPLETED		3

#define AJ_STATUS_WAITING_FOR_RESOURCES	0
#define AJ_STATUS_WAITING		10
#define AJ_STATUS_RETRYING		11
#define AJ_STATUS_PAUSED		12
#define AJ_STATUS_IN_PROGRESS	20
#define AJ_STATUS_PAUSING		21
#define AJ_STATUS_CANCELING		22
#define AJ_STATUS_SUCCEEDED		30
#define AJ_STATUS_FAILED		31
#define AJ_STATUS_CANCELED		32

/* Dataverse operation type codes */
#define AJ_OPTYPE_SYSTEM_EVENT	1
#define AJ_OPTYPE_BULK_DELETE	13
#define AJ_OPTYPE_CLEANUP		14
#define AJ_OPTYPE_SQL			54

/* longest name, dependency_token, dedupe_key or regarding of a job (bytes) */
#define AJ_MAX_KEY_LENGTH		1000

/* ---- settings (module.c) ---- */
extern int	asyncjobs_max_workers;
extern int	asyncjobs_poll_interval;
extern int	asyncjobs_batch_size;
extern int	asyncjobs_batch_max_age;
extern int	asyncjobs_claim_watermark_threshold;
extern bool asyncjobs_enabled;
extern bool asyncjobs_fused_batches;
extern int	asyncjobs_launcher_naptime;
extern int	asyncjobs_max_depth;
extern char *asyncjobs_retention_succeeded;
extern char *asyncjobs_retention_failed;
extern char *asyncjobs_retention_canceled;
extern char *asyncjobs_retention_trace;
extern char *asyncjobs_retention_rollups;
extern int	asyncjobs_trace_level;
extern int	asyncjobs_max_payload_size;

typedef enum AsyncJobsTraceLevel
{
	TRACE_LEVEL_OFF = 0,
	TRACE_LEVEL_EXCEPTION,
	TRACE_LEVEL_ALL
} AsyncJobsTraceLevel;

/* ---- shared memory (shmem.c) ---- */

typedef enum AsyncJobsSlotState
{
	SLOT_FREE = 0,				/* unused */
	SLOT_STARTING,				/* registered by the launcher, not running yet */
	SLOT_IDLE,					/* running, waiting for work */
	SLOT_CLAIMING,				/* running, looking for work */
	SLOT_RUNNING,				/* running a job */
	SLOT_EXITED					/* process gone; launcher frees the slot */
} AsyncJobsSlotState;

/* How a worker's life ended, read by the launcher once the process is gone */
typedef enum AsyncJobsExitReason
{
	EXIT_UNKNOWN = 0,			/* crashed or killed */
	EXIT_NO_EXTENSION,			/* database does not have the extension */
	EXIT_SHUTDOWN,				/* asked to stop */
	EXIT_SURPLUS				/* pool shrank */
} AsyncJobsExitReason;

typedef struct AsyncJobsSlot
{
	AsyncJobsSlotState state;
	AsyncJobsExitReason exit_reason;
	Oid			dboid;
	pid_t		pid;
	int64		worker_id;		/* unique across the server's lives */
	Latch	   *latch;
	int64		job_id;			/* job being run, 0 if none */
	char		operation[NAMEDATALEN];
	TimestampTz since;			/* when the current job started */
	TimestampTz started;		/* when the process started */
	int64		jobs_done;
	pg_atomic_uint32 control_seq;	/* bumped by cancel / pause of its jobs */
	bool		interruptible;	/* a job's handler runs: SIGINT may hit it */
	bool		requeue_pending;	/* a worker of its database died: requeue
									 * its jobs at once (launcher.c) */
	/* claim watermarks (worker.c); under lock */
	bool		watermark_mode; /* its claims start after its watermarks */
	TimestampTz full_claim_at;	/* start of its last claim from the start
								 * in watermark mode */
	/* claim watermarks (worker.c, shmem.c); read and written without lock */
	pg_atomic_uint32 fronts_reset;	/* nonzero: its next claim starts from
									 * the start of every operation */
	pg_atomic_uint32 front_priority;	/* the greatest of its watermarks, */
	pg_atomic_uint64 front_runafter;	/* encoded by asyncjobs_front_encode */
	/* heads-up (shmem.c); written by the worker, read without lock */
	pg_atomic_uint64 idle_since;	/* when it last began to wait for work */
} AsyncJobsSlot;

/* a worker idle this long is woken ahead of an enqueue's commit (shmem.c) */
#define AJ_HEADSUP_IDLE_MS		10

#define AJ_MAX_PENDING_DBS		16
#define AJ_MAX_QUIESCED_DBS		8

typedef struct AsyncJobsShared
{
	LWLock	   *lock;			/* protects everything below */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	int64		next_worker_id;

	/* databases that just created the extension, for the launcher */
	int			n_pending;
	bool		pending_overflow;
	Oid			pending_dbs[AJ_MAX_PENDING_DBS];

	/* databases whose workers must stay away (DROP / RENAME DATABASE) */
	Oid			quiesced_dbs[AJ_MAX_QUIESCED_DBS];
	TimestampTz quiesced_until[AJ_MAX_QUIESCED_DBS];

	/* broadcast whenever a worker commits job outcomes (for wait()) */
	ConditionVariable completion_cv;

	int			n_slots;
	AsyncJobsSlot slots[FLEXIBLE_ARRAY_MEMBER];
} AsyncJobsShared;

extern AsyncJobsShared *AsyncJobs;

extern void asyncjobs_shmem_request(void);
extern void asyncjobs_shmem_startup(void);
extern void asyncjobs_require_shmem(void);
extern void asyncjobs_wake_at_commit(void);
extern void asyncjobs_wake_worker_at_commit(void);
extern void asyncjobs_wake_database(Oid dboid, int count);
extern void asyncjobs_notify_launcher(Oid dboid);
extern void asyncjobs_notify_launcher_at_commit(void);
extern bool asyncjobs_database_quiesced(Oid dboid);
extern void asyncjobs_quiesce_database(Oid dboid, bool on);
extern bool asyncjobs_worker_live(int64 worker_id);
extern void asyncjobs_enqueued_at_commit(int32 priority, TimestampTz runafter);
extern void asyncjobs_reset_fronts(Oid dboid);
extern void asyncjobs_publish_front(bool any, int32 priority, TimestampTz runafter);

/* ---- monitor.c ---- */
extern void asyncjobs_monitor_init(void);
extern void asyncjobs_rollup_buffer(bool on);
extern void asyncjobs_rollup_flush(void);
extern void asyncjobs_rollup_event(const char *op, Oid owner, int16 status,
								   bool has_timespan, double timespan,
								   int32 retried, bool loop);

/* ---- api.c ---- */
/* Refuses a job's data or result larger than asyncjobs.max_payload_size */
extern void asyncjobs_check_payload(Jsonb *value, const char *what);

/* ---- launcher.c / worker.c ---- */
extern PGDLLEXPORT void asyncjobs_launcher_main(Datum main_arg);
extern PGDLLEXPORT void asyncjobs_worker_main(Datum main_arg);
extern void asyncjobs_register_launcher(void);
extern void asyncjobs_utility_init(void);

/* The job the current process runs (worker.c), 0 when none */
extern int64 asyncjobs_current_job_id;
/* This worker's slot (worker.c), NULL in other processes */
extern AsyncJobsSlot *MySlot;
/* Set by enqueue when it refused a job for loop protection (api.c) */
extern bool asyncjobs_loop_detected;

/* ---- executor.c / worker.c / bulkdelete.c ---- */

/* A claimed job, as the worker hands it to the executor */
typedef struct AsyncJob
{
	int64		id;
	char	   *operation;
	int			operationtype;
	Oid			owner;
	Jsonb	   *data;			/* detoasted, in the claim's memory */
	int			retrycount;
	int			maxretries;
	Oid			handler;
	int64		timeout_ms;
	int64		retry_delay_ms;
	int64		retry_delay_max_ms;
	uint32		control_seq;	/* slot's control_seq when state was known */
	ItemPointerData tid;		/* its row version as claimed (worker.c) */
	bool		fused;			/* claimed by a fused claim: locked, not
								 * InProgress, run in the claim's transaction */
	bool		dependent;		/* has a dependency token: jobs may wait
								 * for it to be done */
	int32		priority;		/* with runafter and id: its claim key */
	TimestampTz runafter;
} AsyncJob;

/* What happened when a job ran */
typedef struct AsyncJobOutcome
{
	bool		succeeded;
	char	   *result;			/* jsonb text or NULL */
	int			sqlerrcode;
	char	   *message;		/* full report: ERROR, DETAIL, HINT, CONTEXT */
	char	   *friendly;		/* primary message only */
	char	   *detail;
	char	   *hint;
	char	   *context;
	TimestampTz started;
	TimestampTz ended;
	bool		yielded;		/* a fused job stopped at its time limit: it
								 * is to run again on its own (executor.c) */
} AsyncJobOutcome;

/* how long a job of a fused batch may run before it yields (ms) */
#define AJ_FUSED_JOB_MIN_MS		20
#define AJ_FUSED_JOB_LIMIT_MS \
	Max(asyncjobs_batch_max_age, AJ_FUSED_JOB_MIN_MS)

extern void asyncjobs_run_job(AsyncJob *job, AsyncJobOutcome *outcome);
extern bool asyncjobs_record_outcome(AsyncJob *job, AsyncJobOutcome *outcome);
extern int	asyncjobs_apply_control(AsyncJob *job, const char *attempt);
extern int	asyncjobs_deferred_status(int64 job_id);
extern char *asyncjobs_attempt_json(AsyncJob *job, AsyncJobOutcome *outcome,
									const char *kind);
extern struct _SPI_plan *asyncjobs_prepare_kept(const char *sql, int nargs,
												Oid *argtypes);
extern void asyncjobs_run_bulk_delete(AsyncJob *job, MemoryContext cxt);

/* ---- the claim's choice of jobs (claim.c) ---- */
#define AJ_CLAIM_SCAN_ARGS 8
/* the columns of asyncjobs._claim's and asyncjobs._claim_locked's rows */
#define AJ_CLAIM_COLUMNS 18
extern int	asyncjobs_claim_scan(Datum *args, const char *nulls,
								 MemoryContext cxt, AsyncJob **jobs,
								 bool *capped);

/* ---- claims a crash could undo (inflight.c) ---- */
extern void asyncjobs_inflight_open(int64 worker_id);
extern void asyncjobs_inflight_record(AsyncJob *jobs, int n, bool fused);
extern void asyncjobs_inflight_clear(void);
extern void asyncjobs_inflight_remove(void);
extern void asyncjobs_inflight_recover(void);
extern char *asyncjobs_error_report(ErrorData *edata);
extern void asyncjobs_reset_session_state(void);
extern void asyncjobs_pin_worker_settings(void);
extern int	asyncjobs_enter_job_settings(void);

/* ---- trace.c ---- */
extern void asyncjobs_trace_reset(void);
extern const char *asyncjobs_trace_text(void);
extern bool asyncjobs_trace_truncated(void);

/* ---- retry.c ---- */
extern bool asyncjobs_error_is_transient(int sqlerrcode);
extern int64 asyncjobs_backoff_ms(int retrycount, int64 delay_ms, int64 max_ms);

#endif							/* ASYNCJOBS_H */
