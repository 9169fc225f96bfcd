# Copyright (c) 2026, the asyncjobs authors
#
# Server restarts with jobs queued, claimed and running: a fast restart
# (pg_ctl restart) and an immediate stop followed by a start.  Afterwards
# every job completes, and each job's effect is there exactly once (a
# unique key would fail a second run of a job, so all Succeeded plus one
# row per job means exactly once).

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $jobs_per_round = 30;

my $node = AsyncJobsNode->new_node('restart', max_workers => 2);

$node->safe_psql('postgres',
	'CREATE TABLE effects (k text PRIMARY KEY, job bigint NOT NULL)');

# Enqueues a round of jobs in one transaction; each inserts its key and
# sleeps a little, so that a restart finds some running, some claimed by a
# worker but not started, and some still Ready.
sub enqueue_round
{
	my ($round) = @_;
	$node->safe_psql(
		'postgres', qq{
		SELECT asyncjobs.enqueue_sql(
			format('INSERT INTO effects VALUES (%L, asyncjobs.current_job()); SELECT pg_sleep(0.1)',
			       '$round-' || i),
			data => jsonb_build_object('round', '$round'))
		  FROM generate_series(1, $jobs_per_round) i});
	return;
}

# Waits until the round has a job running, and returns what the jobs of
# the round are doing: "ready|locked|completed".
sub wait_in_flight
{
	my ($round) = @_;
	$node->poll_until(
		'postgres', qq{
		SELECT count(*) > 0 FROM asyncjobs.workers w
		  JOIN pg_stat_activity a ON a.pid = w.pid
		 WHERE a.wait_event = 'PgSleep'},
		't', 10);
	return $node->safe_psql(
		'postgres', qq{
		SELECT count(*) FILTER (WHERE statecode IN (0, 1)) || '|' ||
		       count(*) FILTER (WHERE statecode = 2) || '|' ||
		       count(*) FILTER (WHERE statecode = 3)
		  FROM asyncjobs.asyncoperation WHERE data->>'round' = '$round'});
}

sub check_round
{
	my ($round, $before) = @_;

	my ($ready, $locked, $done) = split /\|/, $before;
	note("$round: before the restart $ready ready, $locked locked, $done done");
	cmp_ok($locked, '>=', 1, "$round: jobs were in flight at the restart");
	cmp_ok($ready, '>=', 1, "$round: jobs were queued at the restart");

	ok($node->wait_for_server(30), "$round: the server is up");
	ok($node->wait_for_workers('postgres', 2, 15), "$round: the pool is back");
	ok($node->wait_for_jobs('postgres', "data->>'round' = '$round'", 30),
		"$round: every job completed");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) FILTER (WHERE statuscode = 30) || '|' ||
			       count(*) FILTER (WHERE statuscode <> 30)
			  FROM asyncjobs.asyncoperation WHERE data->>'round' = '$round'}),
		"$jobs_per_round|0",
		"$round: every job Succeeded");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) || '|' || count(DISTINCT k)
			  FROM effects WHERE k LIKE '$round-%'}),
		"$jobs_per_round|$jobs_per_round",
		"$round: one effect per job");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) FROM asyncjobs.asyncoperation a
			  JOIN effects e ON e.job = a.asyncoperationid
			 WHERE a.data->>'round' = '$round'}),
		$jobs_per_round,
		"$round: each effect was written by its own job");
	cmp_ok(
		$node->safe_psql(
			'postgres', qq{
			SELECT count(*) FROM asyncjobs.asyncoperation
			 WHERE data->>'round' = '$round' AND retrycount > 0}),
		'>=', 1,
		"$round: the interrupted jobs were requeued (retrycount > 0)");
	is( $node->safe_psql(
			'postgres', qq{
			SELECT count(*) FROM asyncjobs.asyncoperation
			 WHERE data->>'round' = '$round'
			   AND jsonb_array_length(attempts) <> retrycount + 1}),
		'0',
		"$round: every job has one attempt per try");
	return;
}

# fast restart
enqueue_round('fast');
my $before = wait_in_flight('fast');
$node->restart;
check_round('fast', $before);

# immediate stop, then start (crash recovery)
enqueue_round('immediate');
$before = wait_in_flight('immediate');
$node->stop('immediate');
$node->start;
check_round('immediate', $before);

is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.job'),
	'0', 'no job is left in the active table');

$node->stop;
done_testing();
