# Copyright (c) 2026, the asyncjobs authors
#
# Exactly-once effects across a crash (DESIGN section 4): kill -9 a worker
# while its job runs.  The postmaster restarts the whole server
# (restart_after_crash = on); the job's half-done transaction is gone, the
# job is requeued with retrycount + 1, runs again and succeeds, and its
# effect is there exactly once.  Then the same for a worker that is
# terminated (FATAL exit, no crash restart): the launcher replaces it and
# the job is requeued at once; and when the launcher holds replacements
# back, the live worker requeues it at once.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node(
	'crash',
	max_workers         => 2,
	restart_after_crash => 1);

$node->safe_psql('postgres',
	'CREATE TABLE effects (k text PRIMARY KEY, ran_at timestamptz)');

# A job whose first attempt inserts row $k, then sleeps long enough to be
# killed (AsyncJobsNode::enqueue_sleeping_job).
sub sleeping_job { return $node->enqueue_sleeping_job('postgres', $_[0]); }

my $job = sleeping_job('crash');
like($job, qr/^\d+$/, 'job enqueued');

# wait until the job's worker sleeps, i.e. its INSERT is done
ok($node->wait_for_job_sleeping('postgres', $job),
	'the job runs and sleeps after its INSERT');
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $job");
like($pid, qr/^\d+$/, "worker $pid runs the job");

my $j = $node->job('postgres', $job);
is($j->{statuscode}, 20, 'the job is InProgress before the kill');
is($j->{retrycount}, 0,  'and has made no retry');

my $log_offset = $node->log_position;
ok(kill('KILL', $pid), "kill -9 worker $pid");

# The postmaster notices, kills every backend and reinitializes.
ok( eval {
		$node->wait_for_log(
			qr/\(PID $pid\) was terminated by signal 9/,
			$log_offset);
		1;
	},
	'the postmaster saw the worker die by signal 9');
ok( eval {
		$node->wait_for_log(qr/all server processes terminated; reinitializing/,
			$log_offset);
		1;
	},
	'the server reinitializes');
ok($node->wait_for_server(30), 'the server accepts connections again');
ok($node->wait_for_workers('postgres', 2, 15), 'the worker pool is back');

is($node->wait_for_job('postgres', $job, 15), 30,
	'the job ran again and succeeded');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'crash'"),
	'1', 'the effect is there exactly once');

$j = $node->job('postgres', $job);
is($j->{retrycount}, 1, 'retrycount counts the lost attempt');
is(scalar @{ $j->{attempts} }, 2, 'two attempts are recorded');
is($j->{attempts}[0]{outcome}, 'worker_lost',
	'the first attempt is recorded as lost with its worker');
is($j->{attempts}[1]{outcome}, 'succeeded', 'the second attempt succeeded');
isnt($j->{hostid}, "$pid\@postgres", 'a new worker ran it');
ok($j->{executiontimespan} < 30,
	'the second attempt did not sleep (it saw its retrycount)');

# The pool works normally after the crash.
my $next = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue_sql('INSERT INTO effects VALUES (''after'', now())')});
is($node->wait_for_job('postgres', $next), 30, 'a new job runs after the crash');

# A worker that dies without taking the server down (terminated: FATAL,
# no crash restart) loses its job the same way; the launcher replaces the
# worker at once and the job is requeued and runs again, exactly once.
my $job2 = sleeping_job('terminated');
ok($node->wait_for_job_sleeping('postgres', $job2),
	'the second job runs and sleeps after its INSERT');
my $pid2 = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $job2");
my $launcher_pid = $node->safe_psql('postgres',
	'SELECT pid FROM pg_stat_activity WHERE backend_type = \'asyncjobs launcher\'');
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid2)"),
	't', "terminate worker $pid2");
# requeued "within a second" by design; allow a generous 5 s end to end
is($node->wait_for_job('postgres', $job2, 5), 30,
	'the job of the terminated worker ran again and succeeded');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'terminated'"),
	'1', 'its effect is there exactly once');
$j = $node->job('postgres', $job2);
is($j->{retrycount}, 1, 'retrycount counts the lost attempt');
is($j->{attempts}[0]{outcome}, 'worker_lost', 'the lost attempt is recorded');
is($node->safe_psql('postgres',
		'SELECT pid FROM pg_stat_activity WHERE backend_type = \'asyncjobs launcher\''),
	$launcher_pid, 'no crash restart happened (same launcher)');
ok($node->wait_for_workers('postgres', 2, 10), 'the pool is full again');

# When workers keep dying (more than 5 unexpected exits within 10 s), the
# launcher holds their replacement back for 5 s.  The job of a worker that
# dies then is requeued by the live worker at once (the launcher tells it),
# not by the replacement 5 s later, nor at the live worker's next periodic
# check.
for my $k (1 .. 5)
{
	my $victim = $node->safe_psql('postgres',
		'SELECT min(pid) FROM asyncjobs.workers');
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($victim)");
	$node->poll_until('postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE pid <> $victim", '2', 10)
	  or BAIL_OUT("worker $victim was not replaced");
}
my $job3 = sleeping_job('held back');
ok( $node->poll_until(
		'postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE asyncoperationid = $job3",
		'1', 10),
	'the third job runs');
my $pid3 = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $job3");
my $survivor = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE pid <> $pid3");
my $offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid3)");
# generous, yet well before the held-back replacement starts (5 s)
is($node->wait_for_job('postgres', $job3, 4), 30,
	'the job of the sixth worker to die ran again before its replacement started');
ok($node->log_contains(qr/keep exiting; next start in 5 seconds/, $offset),
	'the launcher held the replacement back');
$j = $node->job('postgres', $job3);
like($j->{hostid}, qr/^$survivor\@/, 'the live worker requeued and ran it');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'held back'"),
	'1', 'its effect is there exactly once');
ok($node->wait_for_workers('postgres', 2, 20), 'the pool is full again after the hold');

$node->stop;
done_testing();
