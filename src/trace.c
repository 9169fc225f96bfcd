/*-------------------------------------------------------------------------
 *
 * trace.c
 *	  The trace log: asyncjobs.trace(text) inside a job buffers lines in
 *	  the worker's memory; when the job's attempt ends, the worker writes
 *	  them, with the exception details and the run time, to
 *	  asyncjobs.plugintracelog in the transaction that records the outcome.
 *	  Buffered outside the database, the lines survive the rollback of a
 *	  failed job.
 *
 * A job keeps at most TRACE_LIMIT bytes of lines: the newest ones.  Called
 * outside a running job (in a session, or by an external worker's code),
 * trace() does nothing, so that a handler can be tried by hand.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "asyncjobs.h"

#define TRACE_LIMIT		10240

static StringInfo trace_buffer = NULL;
static bool trace_truncated = false;

PG_FUNCTION_INFO_V1(asyncjobs_trace);

/*
 * Starts an empty trace for the next job.
 */
void
asyncjobs_trace_reset(void)
{
	if (trace_buffer == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		trace_buffer = makeStringInfo();
		MemoryContextSwitchTo(oldcxt);
	}
	resetStringInfo(trace_buffer);
	trace_truncated = false;
}

/*
 * The lines traced by the current job, or NULL if none.
 */
const char *
asyncjobs_trace_text(void)
{
	if (trace_buffer == NULL || trace_buffer->len == 0)
		return NULL;
	return trace_buffer->data;
}

/*
 * Drops the oldest lines until the buffer fits the limit.
 */
static void
trace_trim(void)
{
	int			cut = trace_buffer->len - TRACE_LIMIT;
	char	   *nl;

	if (cut <= 0)
		return;
	/* cut at the end of a line if there is one past the excess */
	nl = memchr(trace_buffer->data + cut, '\n', trace_buffer->len - cut);
	if (nl != NULL && nl + 1 < trace_buffer->data + trace_buffer->len)
		cut = (nl + 1) - trace_buffer->data;
	memmove(trace_buffer->data, trace_buffer->data + cut, trace_buffer->len - cut);
	trace_buffer->len -= cut;
	trace_buffer->data[trace_buffer->len] = '\0';
	trace_truncated = true;
}

bool
asyncjobs_trace_truncated(void)
{
	return trace_truncated;
}

/*----
 * asyncjobs.trace(message text) -> void
 */
Datum
asyncjobs_trace(PG_FUNCTION_ARGS)
{
	text	   *msg = PG_GETARG_TEXT_PP(0);

	if (asyncjobs_current_job_id == 0 || MySlot == NULL)
		PG_RETURN_VOID();
	if (trace_buffer == NULL)
		asyncjobs_trace_reset();

	appendBinaryStringInfo(trace_buffer, VARDATA_ANY(msg), VARSIZE_ANY_EXHDR(msg));
	appendStringInfoChar(trace_buffer, '\n');
	trace_trim();
	PG_RETURN_VOID();
}
