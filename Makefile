# asyncjobs: asynchronous job system for PostgreSQL (PGXS build)

MODULE_big = asyncjobs
OBJS = \
	src/api.o \
	src/bulkdelete.o \
	src/claim.o \
	src/executor.o \
	src/inflight.o \
	src/launcher.o \
	src/module.o \
	src/monitor.o \
	src/retry.o \
	src/shmem.o \
	src/trace.o \
	src/utility.o \
	src/worker.o

EXTENSION = asyncjobs
# The install script is the concatenation of sql/parts/*.sql in name order:
# 00_core first, 90_privileges revokes PUBLIC's default rights, and the
# 9x_grants_* files after it grant what each part makes public.
DATA_built = sql/asyncjobs--0.1.sql
SQL_PARTS = $(sort $(wildcard sql/parts/*.sql))
PGFILEDESC = "asyncjobs - asynchronous job system"

PG_CPPFLAGS = -I$(srcdir)/src

# every sql/*.sql is a pg_regress test (api.sql, first by name, creates the extension)
REGRESS = $(sort $(filter-out asyncjobs--%,$(basename $(notdir $(wildcard sql/*.sql)))))
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=./test/asyncjobs.conf

ISOLATION = $(sort $(basename $(notdir $(wildcard test/specs/*.spec))))
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

# every source includes the shared header: rebuild all when it changes
$(OBJS): src/asyncjobs.h src/compat.h

sql/asyncjobs--0.1.sql: $(SQL_PARTS)
	cat $^ > $@
