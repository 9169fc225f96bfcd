# Copyright (c) 2026, the asyncjobs authors
#
# Heads-up (src/shmem.c): an enqueuing transaction wakes a worker that has
# been idle a while just before its commit, so that the worker's first,
# cold claim runs while the commit flushes its WAL; the same worker is
# woken again at the commit and takes the job.
#
# To see the heads-up, the commit is held after its pre-commit step:
# synchronous_standby_names names a standby that never comes, so COMMIT
# waits (SyncRep) until the setting is cleared.  With poll_interval at 60 s,
# a claim logged while the commit waits can only come from the heads-up,
# and it cannot see the job; once the commit completes, the job runs at once
# and exactly once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = AsyncJobsNode->new_node(
	'headsup',
	max_workers      => 1,
	poll_interval    => '60s',
	log_min_messages => 'debug2',
	# a commit waits for synchronous standbys only with WAL senders
	extra_conf => "wal_level = replica\nmax_wal_senders = 2");

$node->safe_psql('postgres',
	'CREATE TABLE ran (job bigint NOT NULL, at timestamptz NOT NULL)');

# the lines each claim logs (DEBUG2, src/worker.c), and how many jobs each took
sub claims
{
	my ($log) = @_;
	my @n;
	push @n, $1 while $log =~ /: a claim of (\d+) jobs from /g;
	return @n;
}

sub wait_for_log
{
	my ($pos, $pattern, $timeout) = @_;
	my $deadline = time + $timeout;
	while (time < $deadline)
	{
		return 1 if $node->log_since($pos) =~ $pattern;
		usleep(50_000);
	}
	return 0;
}

ok($node->wait_for_idle_workers('postgres', 1, 30), 'the worker sleeps');
# idle well beyond AJ_HEADSUP_IDLE_MS (10 ms)
usleep(300_000);

$node->safe_psql('postgres',
	q{ALTER SYSTEM SET synchronous_standby_names = 'asyncjobs_nosuch_standby'});
$node->reload;

my $bg = $node->background_psql('postgres', timeout => 120);
ok( $node->poll_until(
		'postgres', 'SHOW synchronous_standby_names',
		'asyncjobs_nosuch_standby', 30),
	'commits now wait for a standby that never comes');
like($bg->query_safe('SHOW synchronous_standby_names'),
	qr/asyncjobs_nosuch_standby/, 'the enqueuing session sees the setting');

my $pos = $node->log_position;
my $t0 = time;
# returns once the echo is read; the enqueue then waits in its COMMIT
$bg->query_until(qr/enqueuing/, q{\echo enqueuing
SELECT asyncjobs.enqueue_sql('INSERT INTO ran VALUES (asyncjobs.current_job(), clock_timestamp())');
});

ok( $node->poll_until(
		'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'},
		'1', 30),
	'the enqueuing commit waits for the standby');
ok(wait_for_log($pos, qr/: a claim of \d+ jobs from /, 30),
	'the worker claimed while the commit waited (the heads-up)');
my @held = claims($node->log_since($pos));
cmp_ok(scalar @held, '>=', 1,
	'claims while the commit waited: ' . scalar(@held));
is(scalar(grep { $_ != 0 } @held), 0,
	'and they took nothing: the job is not visible before the commit');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ran'),
	'0', 'the job has not run');

# let the commit complete: the commit's wake-up, not the 60 s poll
my $pos_commit = $node->log_position;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET synchronous_standby_names');
$node->reload;
ok( $node->poll_until('postgres', 'SELECT count(*) FROM ran', '1', 30),
	'the job ran once the commit completed');
cmp_ok(time - $t0, '<', 30, 'well before the 60 s poll');
my @after = claims($node->log_since($pos_commit));
ok((grep { $_ > 0 } @after), 'a claim after the commit took the job');

$bg->quit;

# every job once
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT job) FROM ran'),
	'1|1', 'the job ran exactly once');
is( $node->safe_psql(
		'postgres',
		q{SELECT statuscode FROM asyncjobs.asyncoperation
		   WHERE asyncoperationid = (SELECT job FROM ran)}),
	'30',
	'and Succeeded');

$node->stop;
done_testing();
