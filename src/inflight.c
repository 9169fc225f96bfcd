/*-------------------------------------------------------------------------
 *
 * inflight.c
 *	  The claims a crash could undo: a file per worker, in the data
 *	  directory, listing the jobs of its current claim.
 *
 * A worker commits its claim (the jobs marked InProgress) without waiting
 * for the WAL flush: the transaction that runs the jobs and writes their
 * outcomes does wait for it, and its flush covers the claim's commit
 * record, which comes first in the WAL.  So no job's effects can survive a
 * crash that undid its claim, and the job simply runs again.  What a crash
 * can lose is the count: a job whose claim is undone is back to waiting
 * with its retrycount unchanged, and a job that crashes the server every
 * time it runs would run forever (the loss of a worker counts as a
 * transient failure of its jobs: see asyncjobs._worker_lost).
 *
 * Hence this file.  Before its claim commits, a worker writes the claim's
 * jobs and their retrycounts to pg_asyncjobs/claims.<database>.<worker id>
 * (one write(), no fsync: the file must outlive a crash of the server, not
 * of the machine); after the batch that ran them commits, it empties the
 * file.  A worker that starts reads the files of its database's workers
 * that no longer exist, hands their jobs to asyncjobs._requeue_lost_claims()
 * (which counts the loss of a job only if it is still waiting with the
 * retrycount of the claim, i.e. the claim was undone), and removes the
 * files once that committed.  The files of live workers are left alone;
 * those of databases that were dropped are removed.
 *
 * A fused batch (worker.c) claims its jobs by locking them only, in the
 * transaction that runs them: a crash, or the exit of its worker, rolls the
 * claim back with everything else, and the jobs wait again with their
 * retrycount unchanged.  The file is written before its first job runs and
 * is the same record of the jobs' loss.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/file_perm.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/array.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "asyncjobs.h"

#define INFLIGHT_DIR		"pg_asyncjobs"
#define INFLIGHT_MAGIC		0x414a4331	/* "AJC1" */

typedef struct InflightHeader
{
	uint32		magic;
	int32		count;			/* entries that follow */
	Oid			dboid;
	int64		worker_id;
} InflightHeader;

typedef struct InflightEntry
{
	int64		job_id;
	int32		retrycount;
	int32		unused;
} InflightEntry;

static int	inflight_fd = -1;
static char inflight_path[MAXPGPATH];
static bool inflight_dirty = false;
static bool inflight_fused = false;
static char *inflight_buf = NULL;
static Size inflight_bufsize = 0;

static void inflight_write(const char *buf, Size len);

/*
 * Opens this worker's file (creating the directory if needed).
 */
void
asyncjobs_inflight_open(int64 worker_id)
{
	if (MakePGDirectory(INFLIGHT_DIR) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", INFLIGHT_DIR)));
	snprintf(inflight_path, sizeof(inflight_path), "%s/claims.%u.%lld",
			 INFLIGHT_DIR, MyDatabaseId, (long long) worker_id);
	inflight_fd = BasicOpenFilePerm(inflight_path, O_WRONLY | O_CREAT | PG_BINARY,
									pg_file_create_mode);
	if (inflight_fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", inflight_path)));
	inflight_dirty = true;
	asyncjobs_inflight_clear();
}

/*
 * Records the jobs of a claim that is about to commit, or of a fused claim
 * (jobs locked, not InProgress) before its jobs run.
 */
void
asyncjobs_inflight_record(AsyncJob *jobs, int n, bool fused)
{
	Size		len = sizeof(InflightHeader) + sizeof(InflightEntry) * n;
	InflightHeader *hdr;
	InflightEntry *ent;
	int			i;

	if (inflight_fd < 0 || n <= 0)
		return;
	if (len > inflight_bufsize)
	{
		if (inflight_buf)
			pfree(inflight_buf);
		inflight_bufsize = Max(len, 4096);
		inflight_buf = MemoryContextAlloc(TopMemoryContext, inflight_bufsize);
	}
	memset(inflight_buf, 0, len);
	hdr = (InflightHeader *) inflight_buf;
	hdr->magic = INFLIGHT_MAGIC;
	hdr->count = n;
	hdr->dboid = MyDatabaseId;
	hdr->worker_id = MySlot ? MySlot->worker_id : 0;
	ent = (InflightEntry *) (inflight_buf + sizeof(InflightHeader));
	for (i = 0; i < n; i++)
	{
		ent[i].job_id = jobs[i].id;
		ent[i].retrycount = jobs[i].retrycount;
	}
	inflight_write(inflight_buf, len);
	inflight_dirty = true;
	inflight_fused = fused;
}

/*
 * The claim's jobs are done with (their batch committed): empty the file.
 */
void
asyncjobs_inflight_clear(void)
{
	InflightHeader hdr;

	if (inflight_fd < 0 || !inflight_dirty)
		return;
	memset(&hdr, 0, sizeof(hdr));
	hdr.magic = INFLIGHT_MAGIC;
	hdr.count = 0;
	hdr.dboid = MyDatabaseId;
	hdr.worker_id = MySlot ? MySlot->worker_id : 0;
	inflight_write((char *) &hdr, sizeof(hdr));
	inflight_dirty = false;
	inflight_fused = false;
}

/*
 * At a worker's exit: its claims are in the WAL that survives it (the
 * server goes on), and the jobs of a committed claim that it held are
 * requeued as orphans (asyncjobs._requeue_orphans), so its file is of no
 * more use.  Except in the middle of a fused batch: the exit rolls the
 * batch back, and its jobs are waiting again as if never claimed.  The
 * file is left for the next worker to count their loss (a job that makes
 * its worker exit must not run forever), unless the worker was asked to
 * stop (the pool shrank, its database goes away): then nothing was lost.
 */
void
asyncjobs_inflight_remove(void)
{
	if (inflight_fd < 0)
		return;
	close(inflight_fd);
	inflight_fd = -1;
	if (!(inflight_dirty && inflight_fused && MySlot != NULL &&
		  MySlot->exit_reason != EXIT_SURPLUS &&
		  MySlot->exit_reason != EXIT_SHUTDOWN))
		(void) unlink(inflight_path);
}

static void
inflight_write(const char *buf, Size len)
{
	ssize_t		rc;

	errno = 0;
	rc = pg_pwrite(inflight_fd, buf, len, 0);
	if (rc != (ssize_t) len)
	{
		/* if write didn't set errno, assume problem is no disk space */
		if (errno == 0)
			errno = ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", inflight_path)));
	}
}

/*
 * Removes a claims file of a database that no longer exists (its directory
 * under base/ is gone): its jobs went with it.
 */
static void
forget_dropped_database(const char *name)
{
	unsigned int dboid;
	char		dbpath[MAXPGPATH];
	char		path[MAXPGPATH];
	struct stat st;

	if (sscanf(name, "claims.%u.", &dboid) != 1 || dboid == InvalidOid)
		return;
	snprintf(dbpath, sizeof(dbpath), "base/%u", dboid);
	if (stat(dbpath, &st) == 0 || errno != ENOENT)
		return;
	snprintf(path, sizeof(path), "%s/%s", INFLIGHT_DIR, name);
	(void) unlink(path);
}

/*
 * Reads one dead worker's file into the arrays; returns false if it is not
 * a file of ours.
 */
static bool
read_claims_file(const char *path, Oid dboid, int64 worker_id,
				 Datum **ids, Datum **retries, int *n, int *max)
{
	int			fd;
	struct stat st;
	char	   *buf;
	InflightHeader *hdr;
	InflightEntry *ent;
	ssize_t		got;
	int			i;

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return false;		/* another worker removed it */
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	}
	if (fstat(fd, &st) < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	buf = palloc(Max((Size) st.st_size, sizeof(InflightHeader)));
	got = read(fd, buf, st.st_size);
	CloseTransientFile(fd);
	hdr = (InflightHeader *) buf;

	/*
	 * A file is rewritten from its start, so a longer earlier claim can
	 * leave entries past the current count: only the count is read.
	 */
	if (got < (ssize_t) sizeof(InflightHeader) || hdr->magic != INFLIGHT_MAGIC ||
		hdr->dboid != dboid || hdr->worker_id != worker_id || hdr->count < 0 ||
		got < (ssize_t) (sizeof(InflightHeader) + sizeof(InflightEntry) * hdr->count))
	{
		ereport(LOG,
				(errmsg("asyncjobs worker ignores file \"%s\": it is not a claims file of this worker",
						path)));
		pfree(buf);
		return true;			/* removed with the others all the same */
	}
	ent = (InflightEntry *) (buf + sizeof(InflightHeader));
	for (i = 0; i < hdr->count; i++)
	{
		if (*n == *max)
		{
			*max = Max(64, *max * 2);
			*ids = *ids ? repalloc(*ids, sizeof(Datum) * *max) : palloc(sizeof(Datum) * *max);
			*retries = *retries ? repalloc(*retries, sizeof(Datum) * *max) : palloc(sizeof(Datum) * *max);
		}
		(*ids)[*n] = Int64GetDatum(ent[i].job_id);
		(*retries)[*n] = Int32GetDatum(ent[i].retrycount);
		(*n)++;
	}
	pfree(buf);
	return true;
}

/*
 * Counts the loss of the jobs whose claim a crash undid (see the file
 * header), from the files of this database's dead workers, and removes
 * those files.  Runs in a transaction of its own; called by a worker as it
 * starts, before its first claim.
 */
void
asyncjobs_inflight_recover(void)
{
	DIR		   *dir;
	struct dirent *de;
	List	   *paths = NIL;
	Datum	   *ids = NULL;
	Datum	   *retries = NULL;
	int			n = 0;
	int			max = 0;
	char		prefix[64];
	Size		prefixlen;
	ListCell   *lc;
	int			requeued = 0;
	MemoryContext cxt;
	MemoryContext oldcxt;

	/* the file names outlive the transaction */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "asyncjobs lost claims",
								ALLOCSET_SMALL_SIZES);
	snprintf(prefix, sizeof(prefix), "claims.%u.", MyDatabaseId);
	prefixlen = strlen(prefix);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();

	dir = AllocateDir(INFLIGHT_DIR);
	while ((de = ReadDir(dir, INFLIGHT_DIR)) != NULL)
	{
		char	   *end;
		long long	worker_id;
		char		path[MAXPGPATH];

		CHECK_FOR_INTERRUPTS();
		if (strncmp(de->d_name, prefix, prefixlen) != 0)
		{
			forget_dropped_database(de->d_name);
			continue;
		}
		errno = 0;
		worker_id = strtoll(de->d_name + prefixlen, &end, 10);
		if (errno != 0 || *end != '\0' || end == de->d_name + prefixlen)
			continue;
		if (asyncjobs_worker_live((int64) worker_id))
			continue;
		snprintf(path, sizeof(path), "%s/%s", INFLIGHT_DIR, de->d_name);
		if (read_claims_file(path, MyDatabaseId, (int64) worker_id,
							 &ids, &retries, &n, &max))
		{
			oldcxt = MemoryContextSwitchTo(cxt);
			paths = lappend(paths, pstrdup(path));
			MemoryContextSwitchTo(oldcxt);
		}
	}
	FreeDir(dir);

	if (n > 0)
	{
		static const char *sql =
		"SELECT asyncjobs._requeue_lost_claims($1, $2)";
		Oid			types[2] = {INT8ARRAYOID, INT4ARRAYOID};
		Datum		args[2];
		bool		isnull;
		int			rc;

		args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8,
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		args[1] = PointerGetDatum(construct_array(retries, n, INT4OID, 4,
												  true, TYPALIGN_INT));
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		rc = SPI_execute_with_args(sql, 2, types, args, NULL, false, 1);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "asyncjobs could not requeue the jobs of lost claims: %s",
				 SPI_result_code_string(rc));
		requeued = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		PopActiveSnapshot();
		SPI_finish();
	}
	CommitTransactionCommand();

	if (requeued > 0)
		ereport(LOG,
				(errmsg("asyncjobs worker requeued %d jobs whose claim a crash undid",
						requeued),
				 errdetail("Their loss counts as a transient failure, as for the jobs of a worker that died.")));

	/* the losses are counted: the files have served */
	foreach(lc, paths)
		(void) unlink((char *) lfirst(lc));
	MemoryContextDelete(cxt);
}
