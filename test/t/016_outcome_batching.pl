# Copyright (c) 2026, the asyncjobs authors
#
# Outcome batching: a worker runs the jobs it claimed in one transaction,
# each in a subtransaction, and commits after asyncjobs.batch_size jobs or
# asyncjobs.batch_max_age.  Checked here:
#  - short jobs share a commit (their history rows have the same xmin);
#  - a batch is closed by age: no commit holds jobs completed further apart
#    than the age allows;
#  - nothing of one job reaches the next one in the same batch: settings
#    (SET and SET LOCAL), temporary tables, session advisory locks, role;
#  - a worker killed in the middle of a batch loses nothing and duplicates
#    nothing: every job's effect exists exactly once afterwards;
#  - a job canceled after it ran, but before its batch committed, ends
#    Canceled without its effect (the batch is run again).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = AsyncJobsNode->new_node(
	'batching',
	max_workers => 1,
	batch_size => 50,
	restart_after_crash => 1,
	extra_conf => "asyncjobs.batch_max_age = '10s'\ntrack_commit_timestamp = on");

# Rows written by one transaction share its commit timestamp (each job
# runs in a subtransaction of its own, so their xmin differ).
my $commit_of = 'pg_xact_commit_timestamp(h.xmin)';

$node->safe_psql('postgres', q{
	CREATE ROLE app LOGIN;
	GRANT CREATE, USAGE ON SCHEMA public TO app;
	CREATE TABLE effects (job bigint PRIMARY KEY, n int UNIQUE);
	CREATE TABLE seen (k text PRIMARY KEY, work_mem text, app_name text,
	                   temp_table text, session_locks bigint, who text);
	GRANT INSERT, SELECT ON effects, seen TO app;
});

sub pause_pool
{
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET asyncjobs.enabled = off; SELECT pg_reload_conf()");
	$node->poll_until('postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE state IN ('claiming', 'running')",
		'0', 30);
	sleep 1;
}

sub resume_pool
{
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET asyncjobs.enabled = on; SELECT pg_reload_conf()");
}

# --- batches: closed by size, and by age -----------------------------------
$node->safe_psql('postgres', q{
	CREATE FUNCTION effect(data jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO effects VALUES (asyncjobs.current_job(), (data->>'n')::int);
		PERFORM pg_sleep((data->>'sleep')::float8);
	END $$;
	GRANT EXECUTE ON FUNCTION effect(jsonb) TO app;
	SELECT asyncjobs.register_operation('effect', 'effect(jsonb)', max_retries => 5);
});
pause_pool();
$node->safe_psql('postgres',
	q{SELECT count(asyncjobs.enqueue('effect', jsonb_build_object('n', g, 'sleep', 0))) FROM generate_series(1, 200) g});
resume_pool();
ok($node->wait_for_jobs('postgres', "messagename = 'effect'", 60), '200 short jobs ran');
my ($commits, $largest) = split /\|/, $node->safe_psql(
	'postgres',
	"SELECT count(*), max(n) FROM (SELECT $commit_of, count(*) AS n FROM asyncjobs.job_history h "
	  . "WHERE messagename = 'effect' GROUP BY 1) c");
ok($commits <= 20, "200 short jobs took at most 20 commits ($commits)");
ok($largest <= 50, "no commit held more than asyncjobs.batch_size jobs ($largest)");

# (the claims have grown to asyncjobs.batch_size: the next two jobs are
# claimed, and run, together)
# --- isolation between the jobs of one batch -------------------------------
pause_pool();
$node->psql_as('app', 'postgres', q{
	BEGIN;
	-- the first job leaves every kind of session state behind it
	SELECT asyncjobs.enqueue_sql($$
		SET LOCAL work_mem = '77MB';
		SET application_name = 'leaked';
		CREATE TEMP TABLE leak (x int);
		SELECT pg_advisory_lock(4242);
		INSERT INTO seen VALUES ('first', current_setting('work_mem'),
			current_setting('application_name'), to_regclass('pg_temp.leak')::text,
			(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			    AND pid = pg_backend_pid() AND objid = 4242), current_user)$$);
	-- the second looks for it
	SELECT asyncjobs.enqueue_sql($$
		INSERT INTO seen VALUES ('second', current_setting('work_mem'),
			current_setting('application_name'), to_regclass('pg_temp.leak')::text,
			(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			    AND pid = pg_backend_pid() AND objid = 4242), current_user)$$);
	COMMIT;
});
resume_pool();
ok($node->wait_for_jobs('postgres', "messagename = 'sql'", 30), 'both jobs ran');
is( $node->safe_psql(
		'postgres',
		"SELECT count(DISTINCT $commit_of) FROM asyncjobs.job_history h WHERE messagename = 'sql'"),
	'1',
	'the two jobs committed in one transaction');
is( $node->safe_psql('postgres', "SELECT work_mem || ' ' || app_name || ' ' || (temp_table IS NOT NULL) || ' ' || session_locks FROM seen WHERE k = 'first'"),
	'77MB leaked true 1',
	'the first job set its state');
my $default_work_mem = $node->safe_psql('postgres', 'SHOW work_mem');
is( $node->safe_psql(
		'postgres',
		"SELECT work_mem || ' ' || coalesce(nullif(app_name, ''), '-') || ' ' || coalesce(temp_table, 'none') || ' ' || session_locks || ' ' || who "
		  . "FROM seen WHERE k = 'second'"),
	"$default_work_mem - none 0 app",
	'the next job of the batch saw none of it');

$node->safe_psql('postgres', q{
	ALTER SYSTEM SET asyncjobs.batch_max_age = '300ms';
	SELECT pg_reload_conf();
	TRUNCATE effects;
});
pause_pool();
$node->safe_psql('postgres', q{
	DELETE FROM asyncjobs.job_history WHERE messagename = 'effect';
	SELECT count(asyncjobs.enqueue('effect', jsonb_build_object('n', g, 'sleep', 0.015)))
	  FROM generate_series(1, 200) g});
resume_pool();
ok($node->wait_for_jobs('postgres', "messagename = 'effect'", 60), '200 jobs of 15 ms ran');
my $spread = $node->safe_psql(
	'postgres',
	"SELECT max(s) FROM (SELECT extract(epoch FROM max(h.completedon) - min(h.startedon)) AS s "
	  . "FROM asyncjobs.job_history h WHERE messagename = 'effect' GROUP BY $commit_of) c");
# The claims grow to 50 jobs of 15 ms (750 ms); each commit closes once
# 300 ms have passed, so the last job may take its own 15 ms (and a slow
# machine some more) past that.
ok($spread < 0.65, "a commit spans about batch_max_age of jobs, not a whole claim ($spread s)");

# --- a worker killed in the middle of a batch --------------------------------
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET asyncjobs.batch_max_age = '10s';
	SELECT pg_reload_conf();
	TRUNCATE effects;
	DELETE FROM asyncjobs.job_history WHERE messagename = 'effect';
});
pause_pool();
$node->safe_psql('postgres',
	q{SELECT count(asyncjobs.enqueue('effect', jsonb_build_object('n', g, 'sleep', 0.01))) FROM generate_series(1, 300) g});
resume_pool();
# wait until the first batch committed and the next one is under way
ok( $node->poll_until(
		'postgres',
		"SELECT count(*) >= 50 FROM asyncjobs.job_history WHERE messagename = 'effect'",
		't', 60),
	'a first batch committed');
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE state IN ('running', 'claiming')");
ok($pid =~ /^\d+$/, 'the worker is running a batch');
usleep(200_000);
kill 'KILL', $pid;
$node->wait_for_server(60);
ok($node->wait_for_jobs('postgres', "messagename = 'effect'", 120),
	'every job completed after the crash');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || ' ' || count(DISTINCT n) || ' ' || min(n) || ' ' || max(n) FROM effects"),
	'300 300 1 300',
	"every job's effect exists exactly once");
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(DISTINCT statuscode::text, ',') FROM asyncjobs.asyncoperation WHERE messagename = 'effect'"),
	'30',
	'and every job succeeded');
ok( $node->safe_psql(
		'postgres',
		"SELECT count(*) > 0 FROM asyncjobs.asyncoperation WHERE messagename = 'effect' AND retrycount > 0"
	) eq 't',
	'the jobs of the lost batch were run again (counted as retries)');

# The monitoring rollups of a batch are written in its transaction: the
# lost batch counted nothing, its jobs' second runs counted once.
is( $node->safe_psql(
		'postgres',
		"SELECT s.succeeded || ' ' || s.retries || ' ' || "
		  . "(SELECT sum(retrycount) FROM asyncjobs.asyncoperation WHERE messagename = 'effect') "
		  . "FROM asyncjobs.job_stats('1 hour') s WHERE s.operation = 'effect'"),
	(200 + 200 + 300) . ' '
	  . $node->safe_psql('postgres',
		"SELECT sum(retrycount) || ' ' || sum(retrycount) FROM asyncjobs.asyncoperation WHERE messagename = 'effect'"),
	'job_stats counts every job once, and each retry');

# --- a job canceled after it ran, before its batch committed ---------------
# The outcomes of a batch's successful jobs are written together just
# before its commit.  A job canceled in between (here: while the next job
# of its batch sleeps) cannot be taken out of the batch alone: the batch is
# rolled back and run again, and the canceled job ends Canceled, without
# its effect.  That is a batch of jobs claimed InProgress: fused batches
# (whose jobs are not, and cannot be canceled while they run: TAP 019) are
# off for it.
$node->safe_psql('postgres', q{
	TRUNCATE effects;
	DELETE FROM asyncjobs.job_history WHERE messagename = 'effect';
	ALTER SYSTEM SET asyncjobs.fused_batches = off;
	SELECT pg_reload_conf();
});
# short jobs first, so that the next claim takes two jobs at once
$node->safe_psql('postgres',
	q{SELECT count(asyncjobs.enqueue('effect', jsonb_build_object('n', g, 'sleep', 0))) FROM generate_series(1, 20) g});
ok($node->wait_for_jobs('postgres', "messagename = 'effect'", 60), 'short jobs ran');
pause_pool();
my ($first, $second) = $node->enqueue_together('postgres',
	[ 'effect', '{"n": 1001, "sleep": 0}' ],
	[ 'effect', '{"n": 1002, "sleep": 3}' ]);
resume_pool();
ok( $node->poll_until(
		'postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE asyncoperationid = $second",
		'1', 30),
	'the second job of the batch runs');
is( $node->safe_psql('postgres',
		"SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $first"),
	'20', 'the first one ran, and waits for the batch to commit');
$node->safe_psql('postgres', "SELECT asyncjobs.cancel($first)");
ok($node->wait_for_jobs('postgres', "messagename = 'effect'", 60), 'the batch ended');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(asyncoperationid || ':' || statuscode, ' ' ORDER BY asyncoperationid) "
		  . "FROM asyncjobs.asyncoperation WHERE asyncoperationid IN ($first, $second)"),
	"$first:32 $second:30",
	'the canceled job ended Canceled, the other one Succeeded');
is( $node->safe_psql('postgres', 'SELECT string_agg(n::text, \',\' ORDER BY n) FROM effects WHERE n > 1000'),
	'1002', 'only the job that succeeded left its effect, once');
ok($node->log_contains('runs a batch of 2 jobs again'), 'the worker ran the batch again');
$node->safe_psql('postgres',
	'ALTER SYSTEM RESET asyncjobs.fused_batches; SELECT pg_reload_conf()');

# A job that waits for an earlier job of its batch finds it Succeeded,
# although that job's outcome is written only at the batch's commit.
$node->safe_psql('postgres',
	q{SELECT count(asyncjobs.enqueue('effect', jsonb_build_object('n', g, 'sleep', 0))) FROM generate_series(3001, 3020) g});
ok($node->wait_for_jobs('postgres', "messagename = 'effect'", 60), 'short jobs ran again');
pause_pool();
my $waited = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('effect', '{"n": 2001, "sleep": 0}')});
my $waiter = $node->safe_psql('postgres',
	qq{SELECT asyncjobs.enqueue_sql('INSERT INTO seen (k, work_mem) VALUES (''wait'', asyncjobs.wait($waited, ''20 s'')::text)')});
resume_pool();
is($node->wait_for_job('postgres', $waiter, 15), 30, 'the waiting job ended well before its wait timeout');
is( $node->safe_psql(
		'postgres',
		"SELECT count(DISTINCT $commit_of) FROM asyncjobs.job_history h WHERE asyncoperationid IN ($waited, $waiter)"),
	'1', 'the two jobs ran in one batch');
is($node->safe_psql('postgres', "SELECT work_mem FROM seen WHERE k = 'wait'"),
	'30', 'wait() in the later job returned Succeeded for the earlier one');

# --- a job whose row moved after its claim -----------------------------------
# The outcome statement finds the batch's rows by the tuple ids the claim
# returned.  A row that got a new version meanwhile, still InProgress (here
# the job itself updates its row), is not there: its outcome is written by
# id instead, in the same batch, and the batch is not run again.
$node->safe_psql('postgres',
	q{SELECT count(asyncjobs.enqueue('effect', jsonb_build_object('n', g, 'sleep', 0))) FROM generate_series(4001, 4020) g});
ok($node->wait_for_jobs('postgres', "messagename = 'effect'", 60), 'short jobs ran once more');
pause_pool();
my $redone_before = () = $node->log_since(0) =~ /runs a batch of \d+ jobs again/g;
my ($mover, $after_mover) = split /\n/, $node->safe_psql('postgres', q{
	BEGIN;
	SELECT asyncjobs.enqueue_sql('UPDATE asyncjobs.job SET modifiedon = clock_timestamp() WHERE asyncoperationid = asyncjobs.current_job()');
	SELECT asyncjobs.enqueue('effect', '{"n": 5001, "sleep": 0}');
	COMMIT;
});
resume_pool();
is($node->wait_for_job('postgres', $mover, 30), 30, 'the job that moved its row Succeeded');
is($node->wait_for_job('postgres', $after_mover, 30), 30, 'the next job of its batch Succeeded');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || ' ' || count(DISTINCT $commit_of) FROM asyncjobs.job_history h "
		  . "WHERE asyncoperationid IN ($mover, $after_mover)"),
	'2 1', 'both are in history once, written by one commit');
is($node->safe_psql('postgres', "SELECT count(*) FROM asyncjobs.job WHERE asyncoperationid = $mover"),
	'0', 'the moved row left the active table');
my $redone_after = () = $node->log_since(0) =~ /runs a batch of \d+ jobs again/g;
is($redone_after, $redone_before, 'the batch was not run again');

$node->stop;
done_testing();
