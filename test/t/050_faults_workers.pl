# Copyright (c) 2026, the asyncjobs authors
#
# Faults of the worker pool while jobs flow (issue 5, point 4): nothing is
# lost, nothing runs twice.
#
#   1. kill -9 of a worker while jobs run (restart_after_crash = on: the
#      postmaster restarts every process);
#   2. kill -9 of the launcher (the same crash restart);
#   3. pg_terminate_backend() of a worker (no crash restart: the launcher
#      replaces the worker, and the replacement requeues its jobs within
#      seconds);
#   4. max_worker_processes too small for the pool: the launcher's WARNING
#      and its hint, the work done by the workers that exist, and the
#      starved database served once slots free (its neighbour drops the
#      extension, then the pool is lowered).
#
# After each fault: every job of the batch Succeeded, each job's effect is
# there exactly once (a row keyed by the job id, written by the job itself:
# a second run that committed would fail on the key), no job is left in the
# active table, and the pool is back to its size.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();

my $t0 = Time::HiRes::time();

# The job: writes its effect keyed by its own id, then sleeps.  A job with
# "hold" sleeps that long on its first attempt only (so it is surely running
# when the fault hits, and does not sleep when it runs again).
my $setup_sql = q{
CREATE TABLE effects (job bigint PRIMARY KEY, batch text NOT NULL,
                      at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION fx(data jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    rc int;
BEGIN
    INSERT INTO effects (job, batch)
    VALUES (asyncjobs.current_job(), data->>'batch');
    IF data ? 'hold' THEN
        SELECT retrycount INTO rc FROM asyncjobs.job
         WHERE asyncoperationid = asyncjobs.current_job();
        IF rc = 0 THEN
            PERFORM pg_sleep((data->>'hold')::float8);
        END IF;
    END IF;
    PERFORM pg_sleep(coalesce((data->>'sleep')::float8, 0));
END $$;
SELECT asyncjobs.register_operation('fx', 'fx(jsonb)', max_retries => 50);
};

# Enqueues one job that holds (first) and then $n jobs sleeping $sleep s,
# all tagged with $batch.  Returns the id of the holding job.
sub enqueue_batch
{
	my ($node, $db, $batch, $n, $sleep, $hold) = @_;
	my $hold_id = '';
	$hold_id = $node->safe_psql($db,
		qq{SELECT asyncjobs.enqueue('fx', jsonb_build_object('batch', '$batch', 'hold', $hold))})
	  if $hold;
	$node->safe_psql(
		$db, qq{
		SELECT count(asyncjobs.enqueue('fx',
		         jsonb_build_object('batch', '$batch', 'sleep', $sleep)))
		  FROM generate_series(1, $n)});
	return $hold_id;
}

# Waits until the batch has completed jobs and running ones, and (if given)
# the holding job sleeps in its first attempt.
sub wait_in_flight
{
	my ($node, $db, $batch, $hold_id) = @_;
	my $ok = $node->poll_until(
		$db, qq{
		SELECT count(*) FILTER (WHERE statecode = 3) > 0
		   AND (count(*) FILTER (WHERE statecode = 2) > 0
		        -- a job of a fused batch runs without being Locked
		        OR count(*) FILTER (WHERE asyncoperationid IN
		                            (SELECT asyncoperationid FROM asyncjobs.workers)) > 0)
		  FROM asyncjobs.asyncoperation WHERE data->>'batch' = '$batch'},
		't', 60);
	if ($hold_id)
	{
		$ok &&= $node->poll_until(
			$db, qq{
			SELECT count(*) FROM asyncjobs.workers w
			  JOIN pg_stat_activity a ON a.pid = w.pid
			 WHERE w.asyncoperationid = $hold_id
			   AND a.wait_event = 'PgSleep'},
			'1', 60);
	}
	return $ok;
}

# The end state every fault must leave: all of the batch Succeeded, one
# effect per job written by that job, nothing of it left active.
sub check_batch
{
	my ($node, $db, $batch, $n, $timeout) = @_;

	ok($node->wait_for_jobs($db, "data->>'batch' = '$batch'", $timeout // 60),
		"$batch: every job completed");
	is( $node->safe_psql(
			$db, qq{
			SELECT count(*) || '|' ||
			       count(*) FILTER (WHERE statecode = 3 AND statuscode = 30)
			  FROM asyncjobs.asyncoperation WHERE data->>'batch' = '$batch'}),
		"$n|$n",
		"$batch: all $n jobs Succeeded (statecode 3, statuscode 30)");
	is( $node->safe_psql(
			$db, qq{
			SELECT count(*) || '|' || count(DISTINCT e.job) || '|' ||
			       count(a.asyncoperationid)
			  FROM effects e
			  LEFT JOIN asyncjobs.asyncoperation a
			    ON a.asyncoperationid = e.job AND a.data->>'batch' = '$batch'
			 WHERE e.batch = '$batch'}),
		"$n|$n|$n",
		"$batch: exactly one effect per job, each written by its own job");
	is( $node->safe_psql(
			$db, qq{
			SELECT count(*) FROM asyncjobs.job WHERE data->>'batch' = '$batch'}),
		'0',
		"$batch: no job left in the active table (none Locked or stuck)");
	is( $node->safe_psql(
			$db, qq{
			SELECT count(*) FROM asyncjobs.asyncoperation
			 WHERE data->>'batch' = '$batch'
			   AND jsonb_array_length(attempts) <> retrycount + 1}),
		'0',
		"$batch: one attempt recorded per try");
	return;
}

sub launcher_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'asyncjobs launcher'});
}

sub log_has
{
	my ($node, $re, $offset) = @_;
	return eval { $node->wait_for_log($re, $offset); 1 } ? 1 : 0;
}

###########################################################################
# 1. kill -9 of a worker while jobs run
###########################################################################

my $node = AsyncJobsNode->new_node(
	'faults',
	max_workers         => 2,
	restart_after_crash => 1);
$node->safe_psql('postgres', $setup_sql);

my $hold = enqueue_batch($node, 'postgres', 'kill9', 300, 0.01, 60);
ok(wait_in_flight($node, 'postgres', 'kill9', $hold),
	'kill9: jobs completed, jobs Locked, and the holding job sleeps');
my $wpid = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $hold");
like($wpid, qr/^\d+$/, "kill9: worker $wpid runs the holding job");
my $state = $node->safe_psql(
	'postgres', q{
	SELECT count(*) FILTER (WHERE statecode = 3) || '|' ||
	       count(*) FILTER (WHERE statecode = 2)
	  FROM asyncjobs.asyncoperation WHERE data->>'batch' = 'kill9'});
note("kill9: completed|locked before the kill: $state");
my $launcher = launcher_pid($node);

my $off = $node->log_position;
ok(kill('KILL', $wpid), "kill9: kill -9 worker $wpid");
ok(log_has($node, qr/\(PID $wpid\) was terminated by signal 9/, $off),
	'kill9: the postmaster saw the worker die by signal 9');
ok(log_has($node, qr/all server processes terminated; reinitializing/, $off),
	'kill9: the server reinitializes');
ok($node->wait_for_server(60), 'kill9: the server accepts connections again');
ok($node->wait_for_workers('postgres', 2, 30), 'kill9: the pool is back to 2');
check_batch($node, 'postgres', 'kill9', 301);
my $j = $node->job('postgres', $hold);
is($j->{attempts}[0]{outcome}, 'worker_lost',
	'kill9: the killed attempt of the holding job is recorded as worker_lost');
isnt(launcher_pid($node), $launcher, 'kill9: a new launcher (crash restart)');
note(sprintf('kill9 done at %.1fs', Time::HiRes::time() - $t0));

###########################################################################
# 2. kill -9 of the launcher
###########################################################################

$hold = enqueue_batch($node, 'postgres', 'launcher', 300, 0.01, 60);
ok(wait_in_flight($node, 'postgres', 'launcher', $hold),
	'launcher: jobs completed, jobs Locked, and the holding job sleeps');
$launcher = launcher_pid($node);
like($launcher, qr/^\d+$/, "launcher: the launcher is pid $launcher");
is( $node->safe_psql('postgres',
		"SELECT application_name FROM pg_stat_activity WHERE pid = $launcher"),
	'asyncjobs launcher',
	'launcher: its application_name names it');

$off = $node->log_position;
ok(kill('KILL', $launcher), "launcher: kill -9 launcher $launcher");
ok(log_has($node, qr/\(PID $launcher\) was terminated by signal 9/, $off),
	'launcher: the postmaster saw the launcher die by signal 9');
ok(log_has($node, qr/all server processes terminated; reinitializing/, $off),
	'launcher: the server reinitializes');
ok($node->wait_for_server(60), 'launcher: the server accepts connections again');
ok($node->wait_for_workers('postgres', 2, 30), 'launcher: the pool is back to 2');
my $new_launcher = launcher_pid($node);
like($new_launcher, qr/^\d+$/, 'launcher: a launcher runs again');
isnt($new_launcher, $launcher, 'launcher: it is a new one');
check_batch($node, 'postgres', 'launcher', 301);
$j = $node->job('postgres', $hold);
is($j->{attempts}[0]{outcome}, 'worker_lost',
	'launcher: the holding job lost its first attempt in the crash');
note(sprintf('launcher done at %.1fs', Time::HiRes::time() - $t0));

###########################################################################
# 3. pg_terminate_backend() of a worker: no crash restart
###########################################################################

$hold = enqueue_batch($node, 'postgres', 'terminate', 200, 0.01, 60);
ok(wait_in_flight($node, 'postgres', 'terminate', $hold),
	'terminate: jobs completed, jobs Locked, and the holding job sleeps');
my ($tpid, $twid) = split /\|/,
  $node->safe_psql('postgres',
	"SELECT pid, worker_id FROM asyncjobs.workers WHERE asyncoperationid = $hold");
like($twid, qr/^\d+$/, "terminate: worker $tpid (id $twid) runs the holding job");
$launcher = launcher_pid($node);

$off = $node->log_position;
my $t_kill = Time::HiRes::time();
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($tpid)"),
	't', "terminate: pg_terminate_backend($tpid)");
# The replacement worker requeues the jobs of the dead one: "within a couple
# of seconds"; 5 s allowed end to end.
ok( $node->poll_until(
		'postgres', qq{
		SELECT NOT EXISTS (SELECT 1 FROM asyncjobs.job WHERE lockedby = $twid)
		   AND EXISTS (SELECT 1 FROM asyncjobs.asyncoperation
		                WHERE asyncoperationid = $hold
		                  AND attempts \@> '[{"outcome": "worker_lost"}]')},
		't', 5),
	'terminate: the jobs of the terminated worker are requeued within 5 s');
note(sprintf('terminate: requeued %.2fs after the terminate',
		Time::HiRes::time() - $t_kill));
ok($node->wait_for_workers('postgres', 2, 30),
	'terminate: the pool is back to 2');
check_batch($node, 'postgres', 'terminate', 201);
is(launcher_pid($node), $launcher,
	'terminate: no crash restart (the same launcher runs)');
unlike($node->log_since($off), qr/reinitializing/,
	'terminate: the log shows no reinitialization');
$j = $node->job('postgres', $hold);
is($j->{retrycount}, 1, 'terminate: the holding job counts one retry');
isnt($j->{hostid}, "$tpid\@postgres", 'terminate: another worker ran it');

is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.job'),
	'0', 'no job at all is left in the active table');
$node->stop;
note(sprintf('terminate done at %.1fs', Time::HiRes::time() - $t0));

###########################################################################
# 4. max_worker_processes too small for the pool
###########################################################################

# 3 background worker slots: the launcher and 2 workers (no logical
# replication launcher, no parallel workers).  Each of 2 databases wants 4.
my $small = AsyncJobsNode->new_node(
	'slots',
	max_workers      => 4,
	launcher_naptime => '60s',
	create_extension => 0,
	extra_conf       => join("\n",
		'max_worker_processes = 3',
		'max_logical_replication_workers = 0',
		'max_parallel_workers_per_gather = 0',
		'max_parallel_maintenance_workers = 0'));
$small->safe_psql('postgres', 'CREATE DATABASE db2');

$off = $small->log_position;
$small->safe_psql('postgres', 'CREATE EXTENSION asyncjobs');
$small->safe_psql('postgres', $setup_sql);
ok($small->wait_for_workers('postgres', 2, 30),
	'slots: postgres gets the 2 workers there are room for');
ok( log_has(
		$small,
		qr/WARNING:  asyncjobs could not start a worker for database "postgres"\n.*DETAIL:  The database has \d+ of the 4 workers it should have\.\n.*HINT:  Consider increasing the configuration parameter "max_worker_processes"; the launcher keeps trying\./,
		$off),
	'slots: the launcher warns, with a hint about max_worker_processes');

$off = $small->log_position;
$small->safe_psql('db2', 'CREATE EXTENSION asyncjobs');
$small->safe_psql('db2', $setup_sql);
ok( log_has(
		$small,
		qr/WARNING:  asyncjobs could not start a worker for database "db2"\n.*DETAIL:  The database has 0 of the 4 workers it should have\.\n.*HINT:  Consider increasing the configuration parameter "max_worker_processes"/,
		$off),
	'slots: the launcher warns for db2, which has no worker at all');

enqueue_batch($small, 'db2',      'starved', 100, 0, 0);
enqueue_batch($small, 'postgres', 'slots',   300, 0, 0);
check_batch($small, 'postgres', 'slots', 300);
is($small->worker_count('postgres'), '2', 'slots: postgres still has 2 workers');
is($small->worker_count('db2'), '0', 'slots: db2 has none');
is( $small->safe_psql('db2',
		q{SELECT count(*) FROM asyncjobs.asyncoperation
		   WHERE data->>'batch' = 'starved' AND statecode = 0}),
	'100',
	'slots: the jobs of db2 wait, Ready');

# postgres drops its extension: its workers leave, db2 gets the slots
my $drop_off = $small->log_position;
$small->safe_psql('postgres', 'DROP EXTENSION asyncjobs CASCADE');
ok($small->wait_for_workers('postgres', 0, 30, 'db2'),
	'slots: the workers of postgres leave once it drops the extension');
unlike($small->log_since($drop_off), qr/ERROR:.*asyncjobs\._claim/,
	'slots: they leave quietly, without an error from a claim');
ok($small->wait_for_workers('db2', 2, 30, 'db2'),
	'slots: db2 gets the 2 freed slots');
check_batch($small, 'db2', 'starved', 100);

# Back in postgres (starved now), then the pool is lowered to 1: db2 stops
# one worker, postgres gets the slot.  Jobs flow in db2 meanwhile.
# (job ids start again at 1: forget the effects of the dropped jobs)
$small->safe_psql('postgres', 'TRUNCATE effects');
$small->safe_psql('postgres', 'CREATE EXTENSION asyncjobs');
$small->safe_psql('postgres',
	q{SELECT asyncjobs.register_operation('fx', 'fx(jsonb)', max_retries => 50)});
enqueue_batch($small, 'postgres', 'lowered', 100, 0, 0);
enqueue_batch($small, 'db2', 'lowering', 300, 0.01, 0);
is($small->worker_count('postgres'), '0',
	'slots: postgres, back with the extension, has no worker yet');
$small->safe_psql('postgres', 'ALTER SYSTEM SET asyncjobs.max_workers = 1');
$small->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok($small->wait_for_workers('db2', 1, 30), 'slots: db2 is lowered to 1 worker');
ok($small->wait_for_workers('postgres', 1, 30),
	'slots: postgres gets the freed slot');
check_batch($small, 'postgres', 'lowered', 100);
check_batch($small, 'db2', 'lowering', 300);
ok($small->wait_for_workers('postgres', 1, 5)
	  && $small->wait_for_workers('db2', 1, 5),
	'slots: each database has its pool of 1');
is($small->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.job'),
	'0', 'slots: nothing left active in postgres');
is($small->safe_psql('db2', 'SELECT count(*) FROM asyncjobs.job'),
	'0', 'slots: nothing left active in db2');

$small->stop;
note(sprintf('all done at %.1fs', Time::HiRes::time() - $t0));
done_testing();
