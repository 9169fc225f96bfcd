# Copyright (c) 2026, the asyncjobs authors
#
# Wake-up at commit (DESIGN section 4): with asyncjobs.poll_interval at 60 s,
# a job enqueued while every worker sleeps starts well within a second of
# the enqueuing commit.  Only the commit-time wake-up can explain that.
# Latency is measured on the server's clock: from clock_timestamp() taken
# inside the enqueuing transaction (just before COMMIT, so the measure
# includes the commit) to clock_timestamp() taken by the job.
# A rolled-back enqueue must not leave a sleeping worker awake with work.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $rounds = 5;
my $bound_ms = 1000;    # generous: a working wake-up takes a few ms

my $node = AsyncJobsNode->new_node(
	'wakeup',
	max_workers   => 2,
	poll_interval => '60s');

is($node->safe_psql('postgres', 'SHOW asyncjobs.poll_interval'),
	'1min', 'workers poll only every minute');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE sent (job bigint PRIMARY KEY, at timestamptz NOT NULL);
	CREATE TABLE ran  (job bigint PRIMARY KEY, at timestamptz NOT NULL);
});

my @latencies;
for my $round (1 .. $rounds)
{
	ok($node->wait_for_idle_workers('postgres', 2, 10),
		"round $round: both workers sleep");

	my $job = $node->safe_psql(
		'postgres', q{
		BEGIN;
		INSERT INTO sent
		SELECT asyncjobs.enqueue_sql(
		           'INSERT INTO ran VALUES (asyncjobs.current_job(), clock_timestamp())'),
		       clock_timestamp()
		RETURNING job;
		COMMIT;
	});
	like($job, qr/^\d+$/, "round $round: job $job enqueued");

	# far shorter than the poll interval: a miss fails here
	is($node->wait_for_job('postgres', $job, 10), 30,
		"round $round: the job ran (not waiting for the 60 s poll)");

	my $ms = $node->safe_psql(
		'postgres', qq{
		SELECT round(extract(epoch FROM r.at - s.at) * 1000, 1)
		  FROM sent s JOIN ran r USING (job) WHERE job = $job});
	push @latencies, $ms;
	cmp_ok($ms, '<', $bound_ms,
		"round $round: started ${ms} ms after the enqueue (< $bound_ms ms)");
	cmp_ok($ms, '>', 0, "round $round: and after it, not before");
}
note('wake-up latencies (ms): ' . join(', ', @latencies));

# A rolled-back enqueue wakes nobody into running anything, and a later
# committed one is still woken for at once.
ok($node->wait_for_idle_workers('postgres', 2, 10), 'both workers sleep');
$node->safe_psql(
	'postgres', q{
	BEGIN;
	SELECT asyncjobs.enqueue_sql('INSERT INTO ran VALUES (-1, clock_timestamp())');
	ROLLBACK;
});
my $job = $node->safe_psql(
	'postgres', q{
	BEGIN;
	INSERT INTO sent
	SELECT asyncjobs.enqueue_sql(
	           'INSERT INTO ran VALUES (asyncjobs.current_job(), clock_timestamp())'),
	       clock_timestamp()
	RETURNING job;
	COMMIT;
});
is($node->wait_for_job('postgres', $job, 10), 30,
	'a job after a rolled-back enqueue still runs at once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ran WHERE job = -1'),
	'0', 'the rolled-back job never ran');

$node->stop;
done_testing();
