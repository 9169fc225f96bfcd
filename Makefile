# asyncjobs: asynchronous job system for PostgreSQL (PGXS build)

MODULE_big = asyncjobs
OBJS = \
	src/api.o \
	src/executor.o \
	src/launcher.o \
	src/module.o \
	src/retry.o \
	src/shmem.o \
	src/utility.o \
	src/worker.o

EXTENSION = asyncjobs
DATA = sql/asyncjobs--0.1.sql
PGFILEDESC = "asyncjobs - asynchronous job system"

PG_CPPFLAGS = -I$(srcdir)/src

REGRESS = api errors
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=./test/asyncjobs.conf

ISOLATION = claim enqueue
ISOLATION_OPTS = --inputdir=test --outputdir=test/output_iso \
	--temp-instance=./tmp_check_iso \
	--temp-config=./test/isolation.conf --load-extension=asyncjobs

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

EXTRA_CLEAN = test/output_iso

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after the include: PGXS's Makefile.global resets PROVE_FLAGS
PROVE_FLAGS = -I ./test/perl
