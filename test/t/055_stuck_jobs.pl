# Copyright (c) 2026, the asyncjobs authors
#
# asyncjobs.stuck_jobs and health() against real workers: a job whose
# worker hangs (SIGSTOP) past its operation's timeout is "past timeout";
# a job whose worker was killed while nobody could requeue it (the
# launcher stopped too) is "worker gone"; once the pool recovers, the jobs
# are requeued and run, stuck_jobs is empty and health() is OK again.  The
# rollups count each outcome exactly once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node('stuck', max_workers => 1);

$node->safe_psql('postgres', q{
	CREATE TABLE done (job bigint, attempt int, PRIMARY KEY (job, attempt));
	CREATE FUNCTION slow(data jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO done VALUES (asyncjobs.current_job(),
			(SELECT retrycount FROM asyncjobs.asyncoperation
			  WHERE asyncoperationid = asyncjobs.current_job()));
		IF (SELECT retrycount FROM asyncjobs.asyncoperation
		     WHERE asyncoperationid = asyncjobs.current_job()) = 0 THEN
			PERFORM pg_sleep((data->>'s')::float8);
		END IF;
	END $$;
	SELECT asyncjobs.register_operation('slow', 'slow(jsonb)', max_retries => 1,
	                                    retry_delay => '1 second', timeout => '2 seconds');
});

sub worker_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM asyncjobs.workers WHERE database = 'postgres' AND state IN ('idle', 'running', 'claiming')");
}

sub launcher_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'asyncjobs launcher'");
}

# --- a hung worker: past timeout -----------------------------------------
my $j1 = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('slow', '{"s": 60}')});
ok( $node->poll_until(
		'postgres',
		"SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $j1",
		'20', 30),
	'the job runs');
my $pid = worker_pid();
kill 'STOP', $pid;
ok( $node->poll_until(
		'postgres',
		"SELECT reason FROM asyncjobs.stuck_jobs WHERE asyncoperationid = $j1",
		'past timeout', 30),
	'a job whose worker hangs past the timeout is stuck: past timeout');
is( $node->safe_psql(
		'postgres', "SELECT status FROM asyncjobs.health() WHERE check_name = 'stuck_jobs'"),
	'WARN',
	'health() warns of the stuck job');
kill 'CONT', $pid;
# the worker's timer fires as soon as it runs again: a transient error, retried
ok($node->wait_for_job('postgres', $j1, 30) eq '30', 'the job is retried and succeeds');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(attempt::text, ',') || ' ' || (SELECT retrycount FROM asyncjobs.asyncoperation "
		  . "WHERE asyncoperationid = $j1) FROM done WHERE job = $j1"),
	'1 1',
	'the timed-out attempt left nothing; the retry did the work once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.stuck_jobs'),
	'0', 'nothing is stuck any more');

# --- a killed worker nobody can replace: worker gone ----------------------
my $j2 = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('slow', '{"s": 60}')});
ok( $node->poll_until(
		'postgres',
		"SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $j2",
		'20', 30),
	'the second job runs');
$pid = worker_pid();
my $launcher = launcher_pid();
ok($launcher =~ /^\d+$/, 'the launcher is found');
kill 'STOP', $launcher;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok( $node->poll_until(
		'postgres',
		"SELECT reason FROM asyncjobs.stuck_jobs WHERE asyncoperationid = $j2",
		'worker gone', 30),
	'a job whose worker was killed is stuck: worker gone');
is( $node->safe_psql(
		'postgres',
		"SELECT status || ' ' || value FROM asyncjobs.health() WHERE check_name = 'workers_alive'"),
	'CRIT 0',
	'health() is critical: no worker alive');
kill 'CONT', $launcher;
ok($node->wait_for_job('postgres', $j2, 60) eq '30',
	'the pool recovers, requeues the job, and it succeeds');
is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.stuck_jobs'),
	'0', 'nothing is stuck');
ok( $node->poll_until(
		'postgres',
		"SELECT string_agg(check_name || '=' || status, ',' ORDER BY check_name) FROM asyncjobs.health() "
		  . "WHERE check_name IN ('stuck_jobs', 'workers_alive')",
		'stuck_jobs=OK,workers_alive=OK', 30),
	'health() is OK again');

# --- the rollups counted each event once -------------------------------
is( $node->safe_psql(
		'postgres',
		"SELECT succeeded || ' ' || failed || ' ' || retries FROM asyncjobs.job_stats('1 hour') "
		  . "WHERE operation = 'slow'"),
	'2 0 2',
	'job_stats: two jobs succeeded after one retry each');

$node->stop;
done_testing();
