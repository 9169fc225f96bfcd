# Copyright (c) 2026, the asyncjobs authors
#
# No state leaks between jobs run by one worker (DESIGN section 4).  With a
# single worker, job 1 (role app) sets search_path and work_mem without
# LOCAL, sets a custom GUC, creates a TEMP table, PREPAREs a statement and
# takes a session advisory lock; job 2 (the superuser) records what it
# sees: everything must be back to the defaults, and job 2 runs as its own
# owner.  Checked twice: jobs claimed one at a time, and both jobs in one
# claimed batch (enqueued in one transaction).

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('isolation', max_workers => 1);
my $superuser = $node->safe_psql('postgres', 'SELECT current_user');

$node->safe_psql(
	'postgres', q{
	CREATE ROLE app LOGIN NOSUPERUSER;
	CREATE TABLE probe (
		label       text PRIMARY KEY,
		job         bigint,
		pid         int,
		work_mem    text,
		search_path text,
		custom      text,
		temp_table  boolean,
		prepared    boolean,
		advisory    boolean,
		cur_user    text,
		at          timestamptz);
	GRANT INSERT ON probe TO app;
});

# What a job sees, recorded under a label.
sub probe_sql
{
	my ($label) = @_;
	return qq{INSERT INTO public.probe VALUES (
		'$label', asyncjobs.current_job(), pg_backend_pid(),
		current_setting('work_mem'), current_setting('search_path'),
		current_setting('asyncjobs_test.leak', true),
		to_regclass('pg_temp.leak_tmp') IS NOT NULL,
		EXISTS (SELECT FROM pg_prepared_statements WHERE name = 'leak_stmt'),
		EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory'
		                              AND pid = pg_backend_pid()),
		current_user, clock_timestamp())};
}

# Job 1: changes everything it can, then records that the changes took.
sub polluter_sql
{
	my ($label) = @_;
	return join(
		";\n",
		q{SET search_path = leak_schema, public},
		q{SET work_mem = '77MB'},
		q{SELECT set_config('asyncjobs_test.leak', 'leaked', false)},
		q{CREATE TEMP TABLE leak_tmp (x int)},
		q{PREPARE leak_stmt AS SELECT 1},
		q{SELECT pg_advisory_lock(4242)},
		probe_sql($label));
}

sub quote_literal
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

my $default_work_mem = $node->safe_psql('postgres', 'SHOW work_mem');
my $default_search_path = $node->safe_psql('postgres', 'SHOW search_path');

# Checks what the polluter and the job after it recorded.
sub check_pair
{
	my ($case, $j1, $j2) = @_;

	is($node->wait_for_job('postgres', $j1), 30, "$case: job 1 succeeded")
	  or diag(explain($node->job('postgres', $j1)));
	is($node->wait_for_job('postgres', $j2), 30, "$case: job 2 succeeded")
	  or diag(explain($node->job('postgres', $j2)));

	my $p1 = $node->json_query('postgres',
		"SELECT row_to_json(p) FROM probe p WHERE label = '$case-1'");
	my $p2 = $node->json_query('postgres',
		"SELECT row_to_json(p) FROM probe p WHERE label = '$case-2'");

	# job 1 really changed the session (else the test proves nothing)
	is($p1->{work_mem},    '77MB',               "$case: job 1 set work_mem");
	is($p1->{search_path}, 'leak_schema, public', "$case: job 1 set search_path");
	is($p1->{custom},      'leaked',             "$case: job 1 set a custom GUC");
	ok($p1->{temp_table}, "$case: job 1 had its temp table");
	ok($p1->{prepared},   "$case: job 1 had its prepared statement");
	ok($p1->{advisory},   "$case: job 1 held its advisory lock");
	is($p1->{cur_user}, 'app', "$case: job 1 ran as app");

	# same process, after job 1
	is($p2->{pid}, $p1->{pid}, "$case: both jobs ran in the same worker process");
	ok($p2->{at} gt $p1->{at}, "$case: job 2 ran after job 1");

	# nothing leaked into job 2
	is($p2->{work_mem}, $default_work_mem, "$case: work_mem is back to the default");
	is($p2->{search_path}, $default_search_path,
		"$case: search_path is back to the default");
	ok(!defined $p2->{custom} || $p2->{custom} eq '',
		"$case: the custom GUC is gone");
	ok(!$p2->{temp_table}, "$case: the temp table is gone");
	ok(!$p2->{prepared},   "$case: the prepared statement is gone");
	ok(!$p2->{advisory},   "$case: the advisory lock is released");
	is($p2->{cur_user}, $superuser, "$case: job 2 runs as its own owner");

	# and from outside: nobody holds the lock any more
	is($node->safe_psql('postgres', 'SELECT pg_try_advisory_lock(4242)'),
		't', "$case: another session can take the advisory lock");
	return;
}

# Case 1: one job after the other, each claimed on its own.
my $j1 = $node->psql_as('app', 'postgres',
	'SELECT asyncjobs.enqueue_sql(' . quote_literal(polluter_sql('serial-1')) . ')');
is($node->wait_for_job('postgres', $j1), 30, 'serial: job 1 completed first');
my $j2 = $node->safe_psql('postgres',
	'SELECT asyncjobs.enqueue_sql(' . quote_literal(probe_sql('serial-2')) . ')');
check_pair('serial', $j1, $j2);

# Case 2: both in one transaction, so the worker claims them in one batch.
# Enqueued by the superuser with SET ROLE for job 1.
ok($node->wait_for_idle_workers('postgres', 1), 'the worker is idle');
my $ids = $node->safe_psql(
	'postgres',
	"BEGIN;
	 SET LOCAL ROLE app;
	 SELECT asyncjobs.enqueue_sql(" . quote_literal(polluter_sql('batch-1')) . ");
	 RESET ROLE;
	 SELECT asyncjobs.enqueue_sql(" . quote_literal(probe_sql('batch-2')) . ");
	 COMMIT;");
my ($b1, $b2) = split /\n/, $ids;
is($node->job('postgres', $b1)->{ownerid}, 'app', 'batch: job 1 is owned by app');
check_pair('batch', $b1, $b2);

$node->stop;
done_testing();
