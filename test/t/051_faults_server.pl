# Copyright (c) 2026, the asyncjobs authors
#
# Faults of the whole server while a large backlog drains (issue 5,
# point 4): nothing is lost, nothing runs twice.
#
#   1. pg_ctl restart -m immediate with 10,000 jobs queued and some running
#      (crash recovery on the way up);
#   2. pg_ctl restart -m fast, the same;
#   3. a long REPEATABLE READ transaction holding back the xmin horizon while
#      5,000 jobs drain (the job table cannot be pruned meanwhile).
#
# After each: every job of the batch Succeeded, each job's effect is there
# exactly once (a row keyed by the job id, written by the job itself: a
# second run that committed would fail on the key), no job is left in the
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

my $node = AsyncJobsNode->new_node('server', max_workers => 2);

$node->safe_psql(
	'postgres', q{
CREATE TABLE effects (job bigint PRIMARY KEY, batch text NOT NULL,
                      at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION fx(data jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO effects (job, batch)
    VALUES (asyncjobs.current_job(), data->>'batch');
    PERFORM pg_sleep(coalesce((data->>'sleep')::float8, 0));
END $$;
SELECT asyncjobs.register_operation('fx', 'fx(jsonb)', max_retries => 50);
});

sub enqueue_batch
{
	my ($batch, $n, $sleep) = @_;
	return $node->safe_psql(
		'postgres', qq{
		SELECT count(asyncjobs.enqueue('fx',
		         jsonb_build_object('batch', '$batch', 'sleep', $sleep)))
		  FROM generate_series(1, $n)});
}

# "ready|locked|completed" of the batch
sub batch_state
{
	my ($batch) = @_;
	return $node->safe_psql(
		'postgres', qq{
		SELECT count(*) FILTER (WHERE statecode IN (0, 1)) || '|' ||
		       count(*) FILTER (WHERE statecode = 2) || '|' ||
		       count(*) FILTER (WHERE statecode = 3)
		  FROM asyncjobs.asyncoperation WHERE data->>'batch' = '$batch'});
}

sub wait_in_flight
{
	my ($batch) = @_;
	return $node->poll_until(
		'postgres', qq{
		SELECT count(*) FILTER (WHERE statecode = 3) > 0
		   AND (count(*) FILTER (WHERE statecode = 2) > 0
		        -- a job of a fused batch runs without being Locked
		        OR count(*) FILTER (WHERE asyncoperationid IN
		                            (SELECT asyncoperationid FROM asyncjobs.workers)) > 0)
		  FROM asyncjobs.asyncoperation WHERE data->>'batch' = '$batch'},
		't', 60);
}

# The end state every fault must leave.
sub check_batch
{
	my ($batch, $n, $timeout) = @_;
	my $t = Time::HiRes::time();

	ok($node->wait_for_jobs('postgres', "data->>'batch' = '$batch'", $timeout),
		"$batch: every job completed");
	note(sprintf('%s: drained in %.1fs', $batch, Time::HiRes::time() - $t));
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) || '|' ||
			       count(*) FILTER (WHERE statecode = 3 AND statuscode = 30)
			  FROM asyncjobs.asyncoperation WHERE data->>'batch' = '$batch'}),
		"$n|$n",
		"$batch: all $n jobs Succeeded (statecode 3, statuscode 30)");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) || '|' || count(DISTINCT e.job) || '|' ||
			       count(a.asyncoperationid)
			  FROM effects e
			  LEFT JOIN asyncjobs.asyncoperation a
			    ON a.asyncoperationid = e.job AND a.data->>'batch' = '$batch'
			 WHERE e.batch = '$batch'}),
		"$n|$n|$n",
		"$batch: exactly one effect per job, each written by its own job");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) FROM asyncjobs.job WHERE data->>'batch' = '$batch'}),
		'0',
		"$batch: no job left in the active table (none Locked or stuck)");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) FROM asyncjobs.asyncoperation
			 WHERE data->>'batch' = '$batch'
			   AND jsonb_array_length(attempts) <> retrycount + 1}),
		'0',
		"$batch: one attempt recorded per try");
	ok($node->wait_for_workers('postgres', 2, 30),
		"$batch: the pool is at its size (2)");
	return;
}

# pg_ctl restart with a shutdown mode (Cluster::restart has none)
sub pg_ctl_restart
{
	my ($mode) = @_;
	local %ENV = $node->_get_env(PGAPPNAME => undef);
	PostgreSQL::Test::Utils::system_or_bail('pg_ctl', '-w', '-D',
		$node->data_dir, '-l', $node->logfile, '-m', $mode, 'restart');
	$node->_update_pid(1);
	return;
}

###########################################################################
# 1 and 2. pg_ctl restart -m immediate / -m fast with 10,000 jobs
###########################################################################

foreach my $mode ('immediate', 'fast')
{
	my $batch = "restart-$mode";
	my $t = Time::HiRes::time();
	is(enqueue_batch($batch, 10_000, 0.001), '10000',
		"$batch: 10,000 jobs enqueued");
	note(sprintf('%s: enqueued in %.1fs', $batch, Time::HiRes::time() - $t));
	ok(wait_in_flight($batch), "$batch: some completed, some running");
	my ($ready, $locked, $done) = split /\|/, batch_state($batch);
	note("$batch: before the restart $ready ready, $locked locked, $done done");
	cmp_ok($ready, '>=', 1000, "$batch: thousands still queued at the restart");

	my $off = $node->log_position;
	pg_ctl_restart($mode);
	my $log = $node->log_since($off);
	if ($mode eq 'immediate')
	{
		like($log, qr/received immediate shutdown request/,
			"$batch: the server was stopped in immediate mode");
		ok($node->poll_until('postgres', "SELECT 1", '1', 30)
			  && $node->log_since($off) =~ /database system was not properly shut down; automatic recovery in progress/,
			"$batch: crash recovery on the way up");
	}
	else
	{
		like($log, qr/received fast shutdown request/,
			"$batch: the server was stopped in fast mode");
	}
	ok($node->wait_for_server(60), "$batch: the server is up");
	ok($node->wait_for_workers('postgres', 2, 30), "$batch: the pool is back");
	check_batch($batch, 10_000, 180);
	my $lost = $node->safe_psql(
		'postgres', qq{
		SELECT count(*) FROM asyncjobs.asyncoperation
		 WHERE data->>'batch' = '$batch'
		   AND attempts \@> '[{"outcome": "worker_lost"}]'});
	note("$batch: $lost jobs lost an attempt in the restart");
	if ($mode eq 'immediate')
	{
		cmp_ok($lost, '>=', 1,
			"$batch: the jobs in flight were requeued (worker_lost)");
	}
	note(sprintf('%s done at %.1fs', $batch, Time::HiRes::time() - $t0));
}

###########################################################################
# 3. a long transaction holds back the xmin horizon while jobs flow
###########################################################################

my $effects_before =
  $node->safe_psql('postgres', 'SELECT count(*) FROM effects');
my $bg = $node->background_psql('postgres', timeout => 600);
$bg->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
is($bg->query_safe('SELECT count(*) FROM effects'),
	$effects_before, 'xmin: the long transaction took its snapshot');
my $bg_pid = $bg->query_safe('SELECT pg_backend_pid()');
my $xmin = $node->safe_psql('postgres',
	"SELECT backend_xmin FROM pg_stat_activity WHERE pid = $bg_pid");
like($xmin, qr/^\d+$/, "xmin: it holds back the horizon (backend_xmin $xmin)");

my $t = Time::HiRes::time();
is(enqueue_batch('xmin', 5000, 0), '5000', 'xmin: 5,000 jobs enqueued');
check_batch('xmin', 5000, 180);
note(sprintf('xmin: enqueued and drained in %.1fs', Time::HiRes::time() - $t));
is( $node->safe_psql('postgres',
		"SELECT backend_xmin FROM pg_stat_activity WHERE pid = $bg_pid"),
	$xmin,
	'xmin: the horizon was held back the whole time');
is($bg->query_safe('SELECT count(*) FROM effects'),
	$effects_before, 'xmin: the long transaction still sees its snapshot');
note('xmin: dead tuples in asyncjobs.job: '
	  . $node->safe_psql('postgres',
		q{SELECT n_dead_tup FROM pg_stat_user_tables
		   WHERE relid = 'asyncjobs.job'::regclass}));
$bg->query_safe('COMMIT');
$bg->quit;

# jobs still flow once the horizon moves on
is(enqueue_batch('after', 100, 0), '100', 'after: 100 more jobs');
check_batch('after', 100, 60);

is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.job'),
	'0', 'no job at all is left in the active table');
is($node->safe_psql('postgres', 'SELECT count(*) FROM effects'),
	'25100', 'the effects of all 25,100 jobs are there, once each');

$node->stop;
note(sprintf('all done at %.1fs', Time::HiRes::time() - $t0));
done_testing();
