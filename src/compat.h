/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Version shims.  Logic files contain no PG_VERSION_NUM tests.
 *
 * Copyright (c) 2026, the asyncjobs authors
 *
 *-------------------------------------------------------------------------
 */
#ifndef ASYNCJOBS_COMPAT_H
#define ASYNCJOBS_COMPAT_H

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 160000
#error "asyncjobs supports PostgreSQL 15 only"
#endif

/* PostgreSQL 15's fmgr.h does not declare _PG_init */
extern void _PG_init(void);

#endif							/* ASYNCJOBS_COMPAT_H */
