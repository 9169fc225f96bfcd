# Copyright (c) 2026, the asyncjobs authors
#
# A database owner who is not a superuser chooses the search_path of every
# session of the database (ALTER DATABASE ... SET search_path), the
# workers' included, and the workers run their own queries as a superuser.
# A schema of that owner's listed before pg_catalog, with an "=" operator
# for bigint and text, must never be called by the workers' own queries
# (claiming, cancel checks, the trace log, bulk delete bookkeeping) -- only
# by the owner's jobs, as the owner.  Jobs themselves still run with the
# database's search_path.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('dbpath', max_workers => 2,
	extra_conf => "asyncjobs.trace_level = 'all'");
my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

$node->safe_psql('postgres', qq{
	CREATE ROLE owner_x LOGIN NOSUPERUSER;
	CREATE DATABASE trapdb OWNER owner_x;
});
$node->safe_psql('trapdb', 'CREATE EXTENSION asyncjobs');
ok($node->wait_for_workers('trapdb', 2), 'the workers of trapdb are up');

# The owner's traps: each logs the role that called it.
$node->psql_as('owner_x', 'trapdb', q{
	CREATE SCHEMA trap;
	CREATE FUNCTION public.my_backend_type() RETURNS text
	LANGUAGE sql AS $$
		SELECT backend_type FROM pg_catalog.pg_stat_activity
		 WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() $$;
	CREATE TABLE public.trap_log (who text, what text,
		backend text DEFAULT public.my_backend_type());
	GRANT INSERT ON public.trap_log TO PUBLIC;
	CREATE FUNCTION trap.int8eq(bigint, bigint) RETURNS boolean
	LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.trap_log (who, what) VALUES (current_user, 'bigint =');
		RETURN pg_catalog.int8eq($1, $2);
	END $$;
	CREATE OPERATOR trap.= (LEFTARG = bigint, RIGHTARG = bigint,
	                        FUNCTION = trap.int8eq);
	CREATE FUNCTION trap.texteq(text, text) RETURNS boolean
	LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.trap_log (who, what) VALUES (current_user, 'text =');
		RETURN pg_catalog.texteq($1, $2);
	END $$;
	CREATE OPERATOR trap.= (LEFTARG = text, RIGHTARG = text,
	                        FUNCTION = trap.texteq);
	GRANT USAGE ON SCHEMA trap TO PUBLIC;
	-- rows for a bulk delete
	CREATE TABLE public.old_rows (id bigint PRIMARY KEY, created date);
	INSERT INTO public.old_rows SELECT g, '2020-01-01' FROM generate_series(1, 300) g;
	ALTER DATABASE trapdb SET search_path = trap, pg_catalog, public;
});

# New workers read the database's new setting: end the running ones and
# let the launcher start others.
my $old_pids = $node->safe_psql('postgres',
	"SELECT string_agg(pid::text, ',') FROM asyncjobs.workers WHERE database = 'trapdb'");
$node->safe_psql('postgres',
	"SELECT pg_terminate_backend(pid) FROM asyncjobs.workers WHERE database = 'trapdb'");
ok( $node->poll_until(
		'postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE database = 'trapdb' "
		  . "AND state IN ('idle', 'claiming', 'running') AND pid NOT IN ($old_pids)",
		'2', 60),
	'the workers of trapdb were restarted');

# The owner's jobs: SQL jobs (one traced), a job that is canceled while it
# runs, and a bulk delete in small batches.
my $ids = $node->psql_as('owner_x', 'trapdb', q{
	SELECT string_agg(id::text, ',') FROM (
	  SELECT asyncjobs.enqueue_sql('SELECT asyncjobs.trace(''hello''); '
	                               || 'INSERT INTO public.trap_log (who, what) VALUES (current_user, current_setting(''search_path''))') AS id
	  UNION ALL
	  SELECT asyncjobs.enqueue_sql('INSERT INTO public.trap_log (who, what) '
	                               || 'VALUES (current_user, ''enable_seqscan='' || current_setting(''enable_seqscan'') '
	                               || '|| '' enable_bitmapscan='' || current_setting(''enable_bitmapscan''))')
	  UNION ALL
	  SELECT asyncjobs.enqueue_sql('SELECT 1') FROM generate_series(1, 20)
	  UNION ALL
	  SELECT asyncjobs.bulk_delete('public.old_rows', $$created < '2021-01-01'$$, batch_size => 50)
	) s});
my $sleeper = $node->psql_as('owner_x', 'trapdb',
	q{SELECT asyncjobs.enqueue_sql('SELECT pg_sleep(30)')});
ok( $node->poll_until(
		'trapdb',
		"SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $sleeper",
		'20', 30),
	'the long job runs');
$node->psql_as('owner_x', 'trapdb', "SELECT asyncjobs.cancel($sleeper)");

ok($node->wait_for_jobs('trapdb', "asyncoperationid IN ($ids, $sleeper)", 60),
	'every job completed');
is( $node->safe_psql(
		'trapdb',
		"SELECT string_agg(DISTINCT statuscode::text, ',') FROM asyncjobs.asyncoperation "
		  . "WHERE asyncoperationid IN ($ids)"),
	'30',
	'the SQL jobs and the bulk delete succeeded');
is( $node->safe_psql(
		'trapdb',
		"SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $sleeper"),
	'32',
	'the canceled job ended Canceled');
is($node->safe_psql('trapdb', 'SELECT count(*) FROM public.old_rows'),
	'0', 'the bulk delete deleted every row');
is( $node->safe_psql(
		'trapdb',
		"SELECT count(*) FROM asyncjobs.plugintracelog WHERE messageblock LIKE '%hello%'"),
	'1', 'the trace line was kept');

# The job ran with the database's search_path, as its owner.
is( $node->safe_psql(
		'trapdb',
		"SELECT who || ': ' || what FROM public.trap_log WHERE what LIKE 'trap,%'"),
	'owner_x: trap, pg_catalog, public',
	"a job runs with the database's search_path");

is( $node->safe_psql(
		'trapdb', "SELECT what FROM public.trap_log WHERE what LIKE 'enable_seqscan=%'"),
	'enable_seqscan=on enable_bitmapscan=on',
	'a job plans with the session\'s enable_seqscan and enable_bitmapscan (the worker keeps them off for its own statements)');

# The traps work: this test's own queries, as the superuser in trapdb,
# call them.  But no trap ran in a worker as anyone but the owner.
ok( $node->safe_psql(
		'trapdb',
		"SELECT count(*) > 0 FROM public.trap_log WHERE who = '$superuser' AND backend = 'client backend'"
	) eq 't',
	"the traps catch a superuser's queries in trapdb");
is( $node->safe_psql(
		'trapdb',
		"SELECT coalesce(string_agg(DISTINCT who || ' in ' || coalesce(backend, '?'), ','), 'none') "
		  . "FROM public.trap_log WHERE who <> 'owner_x' AND backend IS DISTINCT FROM 'client backend'"),
	'none',
	"the workers' own queries never called the owner's operators");
isnt($superuser, 'owner_x', 'the workers connect as another role');

$node->stop;
done_testing();
