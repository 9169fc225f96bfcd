/*-------------------------------------------------------------------------
 *
 * retry.c
 *	  Retry policy: which errors are transient, and how long a job waits
 *	  before its next attempt.
 *
 * Transient (DESIGN section 6): serialization failure, deadlock, lock not
 * available, statement or lock timeout (query canceled), connection errors
 * (class 08), insufficient resources (class 53), and AJ001, which a
 * handler raises to ask for a retry.  Everything else is permanent.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/pg_prng.h"
#include "utils/elog.h"

#include "asyncjobs.h"

bool
asyncjobs_error_is_transient(int sqlerrcode)
{
	switch (sqlerrcode)
	{
		case ERRCODE_T_R_SERIALIZATION_FAILURE:
		case ERRCODE_T_R_DEADLOCK_DETECTED:
		case ERRCODE_LOCK_NOT_AVAILABLE:
		case ERRCODE_QUERY_CANCELED:
		case ERRCODE_ASYNCJOBS_RETRY:
			return true;
		default:
			break;
	}

	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_CONNECTION_EXCEPTION:
		case ERRCODE_INSUFFICIENT_RESOURCES:
			return true;
		default:
			return false;
	}
}

/*
 * Delay before the next attempt of a job that has made "retrycount"
 * retries so far: min(delay * 2^retrycount, max) with +/- 10% jitter, so
 * that jobs that failed together do not all come back together.
 */
int64
asyncjobs_backoff_ms(int retrycount, int64 delay_ms, int64 max_ms)
{
	double		base = (double) Max(delay_ms, 1);
	double		jitter;
	int			i;

	for (i = 0; i < retrycount && base < (double) max_ms; i++)
		base *= 2.0;
	if (base > (double) max_ms)
		base = (double) max_ms;

	jitter = 0.9 + 0.2 * pg_prng_double(&pg_global_prng_state);
	return (int64) (base * jitter);
}
