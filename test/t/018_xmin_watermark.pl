# Copyright (c) 2026, the asyncjobs authors
#
# Claim watermarks (src/worker.c, "Claim watermarks"), with 2 workers and
# the default asyncjobs.poll_interval (1 s) and
# asyncjobs.claim_watermark_threshold:
# - a healthy drain never puts a worker in watermark mode, and its claims
#   start from the watermarks (the last job the worker took);
# - while a REPEATABLE READ transaction holds back the xmin horizon, a
#   drain of 20,000 jobs makes every claim from the start read the entries
#   of the jobs done since, and the workers enter watermark mode (DEBUG1);
#   their claims from the watermarks then read few such entries, and the
#   pool makes one claim from the start a second, not one per worker,
#   besides those the workers are told to make (see below);
# - in watermark mode, jobs whose claim key sorts before a watermark still
#   run, in order where order is defined: a job of a higher priority than
#   the backlog, postponed jobs that fall due, a dependency-token chain of
#   3 jobs; every job runs exactly once; the enqueue of the higher
#   priority job and the chain's jobs tell workers to claim from the start
#   ("from the start (told)");
# - once the horizon is released the workers leave watermark mode, and
#   claims from the start are cheap again.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = AsyncJobsNode->new_node(
	'xminwm',
	max_workers      => 2,
	poll_interval    => '1s',
	log_min_messages => 'debug2');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE runs (job bigint NOT NULL, tag text NOT NULL,
	                   started timestamptz NOT NULL, ended timestamptz NOT NULL);

	-- records when it ran, sleeping data->'sleep' seconds
	CREATE FUNCTION record_run(data jsonb) RETURNS void
	LANGUAGE plpgsql AS $$
	DECLARE
		t0 timestamptz := clock_timestamp();
	BEGIN
		PERFORM pg_sleep(coalesce((data->>'sleep')::float8, 0));
		INSERT INTO runs VALUES (asyncjobs.current_job(), data->>'tag', t0,
		                         clock_timestamp());
	END
	$$;
	SELECT asyncjobs.register_operation('rec', 'record_run(jsonb)');
	CREATE FUNCTION noop(data jsonb) RETURNS void LANGUAGE sql AS '';
	SELECT asyncjobs.register_operation('fill', 'noop(jsonb)');
});

# n jobs of 'fill' in one transaction, in chunks of 5,000
sub enqueue_fill
{
	my ($n) = @_;
	my $sql = "BEGIN;\n";
	for (my $done = 0; $done < $n; $done += 5000)
	{
		my $c = $n - $done < 5000 ? $n - $done : 5000;
		$sql .=
		  "SELECT count(*) FROM asyncjobs.enqueue_many('fill', "
		  . "ARRAY(SELECT '{}'::jsonb FROM generate_series(1, $c)));\n";
	}
	$node->safe_psql('postgres', $sql . 'COMMIT;');
}

# the workers' mode changes in a piece of the server log
sub mode_lines
{
	my ($log, $what) = @_;
	return scalar(() = $log =~ /asyncjobs worker \d+ $what claim watermark mode/g);
}

# the claims' DEBUG2 lines in a piece of the log: [from, entries, buffers],
# from: start, told (from the start, as told) or watermarks
sub claim_lines
{
	my ($log) = @_;
	my @claims;
	while ($log =~
		/a claim of \d+ jobs from the (start|watermarks)( \(told\))? read (\d+) entries of gone jobs and touched (\d+) buffers/g
	  )
	{
		push @claims, [ $2 ? 'told' : $1, $3, $4 ];
	}
	return @claims;
}

sub median
{
	my @v = sort { $a <=> $b } @_;
	return @v ? $v[ int($#v / 2) ] : undef;
}

my $limit = 10_000 + 2 * 500;    # threshold + max_workers * batch_size

###########################################################################
# healthy: no watermark mode
###########################################################################

my $pos = $node->log_position;
enqueue_fill(5000);
ok($node->wait_for_jobs('postgres', q{messagename = 'fill'}, 60),
	'healthy: 5,000 jobs drained');
ok($node->wait_for_idle_workers('postgres', 2, 30), 'healthy: workers idle');
my $log = $node->log_since($pos);
my @claims = claim_lines($log);
cmp_ok(scalar @claims, '>', 0, 'healthy: the claims are logged (DEBUG2)');
is(mode_lines($log, 'enters'), 0, 'healthy: no worker enters watermark mode');
cmp_ok(scalar(grep { $_->[0] eq 'watermarks' } @claims),
	'>', 0, 'healthy: claims start from the watermarks');

###########################################################################
# hold the xmin horizon and drain: watermark mode
###########################################################################

my $holder = $node->background_psql('postgres', timeout => 600);
$holder->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
like($holder->query_safe('SELECT txid_current()'),
	qr/^\d+$/, 'hold: the transaction has an xid');
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
my $xmin = $node->safe_psql('postgres',
	"SELECT backend_xmin FROM pg_stat_activity WHERE pid = $holder_pid");
like($xmin, qr/^\d+$/, "hold: it holds back the horizon (backend_xmin $xmin)");

$pos = $node->log_position;
my $pos_hold = $pos;
my $t0 = time;
enqueue_fill(20_000);
ok( $node->poll_until(
		'postgres',
		q{SELECT count(*) FROM asyncjobs.job_history WHERE messagename = 'fill'},
		'25000', 120),
	'hold: 20,000 more jobs drained');
note(sprintf('hold: 20,000 jobs drained in %.1f s', time - $t0));
ok( $node->poll_until(
		'postgres',
		q{SELECT count(*) FROM asyncjobs.workers WHERE state = 'idle'}, '2', 30),
	'hold: workers idle');

# The drain may end before any claim from the start has run under the hold
# (20,000 jobs take about a second, the poll interval): the idle workers'
# claims from the start, one per poll interval, read the entries of every
# job done since, and enter watermark mode.
my $deadline = time + 30;
$log = $node->log_since($pos);
while (mode_lines($log, 'enters') == 0 && time < $deadline)
{
	usleep(200_000);
	$log = $node->log_since($pos);
}
my $entered = mode_lines($log, 'enters');
cmp_ok($entered, '>=', 1,
	"hold: $entered worker(s) entered watermark mode (DEBUG1)");
is(mode_lines($log, 'leaves'), 0, 'hold: and none left it');
if ($log =~ /(asyncjobs worker \d+ enters claim watermark mode: .*)/)
{
	note("hold: $1");
}
@claims = claim_lines($log);
my @from_wm = map { $_->[1] } grep { $_->[0] eq 'watermarks' } @claims;
my @from_start_buf = map { $_->[2] } grep { $_->[0] eq 'start' } @claims;
my @from_wm_buf = map { $_->[2] } grep { $_->[0] eq 'watermarks' } @claims;
cmp_ok(scalar @from_wm, '>', 0,
	'hold: claims from the watermarks were made (' . scalar(@from_wm) . ')');
cmp_ok(median(@from_wm) // 1e9, '<', 1000,
	'hold: the median claim from the watermarks read fewer than 1,000 entries of gone jobs ('
	  . (median(@from_wm) // 'none') . ')');
note(   'hold: median buffers of a claim from the start '
	  . (median(@from_start_buf) // '-')
	  . ', from the watermarks '
	  . (median(@from_wm_buf) // '-'));

###########################################################################
# in watermark mode: jobs that sort before a watermark still run
###########################################################################

# A backlog of short jobs (claimed some 25 at a time) keeps the watermarks
# moving for a few seconds.  The chain is queued just before it, in the
# same transaction: its first job is claimed with backlog jobs after it,
# so the next two, released each by the completion of the one before,
# sort before the watermark of the worker that took it.
$pos = $node->log_position;
my $t_backlog = time;
my $chain = $node->safe_psql(
	'postgres', q{
	BEGIN;
	SELECT string_agg(asyncjobs.enqueue('rec', '{"tag": "chain", "sleep": 0.002}',
	                                    dependency_token => 'wm-chain')::text, ' ')
	  FROM generate_series(1, 3);
	SELECT count(asyncjobs.enqueue('rec', '{"tag": "backlog", "sleep": 0.002}'))
	  FROM generate_series(1, 3000);
	COMMIT;});
($chain) = split /\n/, $chain;
ok( $node->poll_until(
		'postgres', q{SELECT count(*) >= 200 FROM runs WHERE tag = 'backlog'},
		't', 30),
	'watermark: the backlog runs');

my $ids = $node->safe_psql(
	'postgres', q{
	BEGIN;
	SELECT asyncjobs.enqueue('rec', '{"tag": "urgent"}', priority => -1);
	SELECT asyncjobs.enqueue('rec', '{"tag": "late0"}',
	                         postpone_until => now() + interval '2 s');
	SELECT asyncjobs.enqueue('rec', '{"tag": "late1"}', priority => -1,
	                         postpone_until => now() + interval '2 s');
	COMMIT;});
my ($urgent, $late0, $late1) = split /\n/, $ids;
like($urgent, qr/^\d+$/, "watermark: urgent job $urgent enqueued");
note('watermark: backlog jobs run when it was enqueued: '
	  . $node->safe_psql('postgres', q{SELECT count(*) FROM runs WHERE tag = 'backlog'}));

ok($node->wait_for_jobs('postgres', q{messagename = 'rec'}, 90),
	'watermark: every job of rec completed');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FILTER (WHERE statuscode = 30) || '/' || count(*)
		    FROM asyncjobs.asyncoperation WHERE messagename = 'rec'}),
	'3006/3006',
	'watermark: all 3,006 Succeeded');

# (a) the higher priority: ahead of the backlog that was still queued
my ($urgent_wait, $after_it) = split /\|/, $node->safe_psql(
	'postgres', qq{
	SELECT extract(epoch FROM r.started - c.createdon)::numeric(10, 3),
	       (SELECT count(*) FROM runs b WHERE b.tag = 'backlog'
	           AND b.started > r.started)
	  FROM runs r JOIN asyncjobs.asyncoperation c ON c.asyncoperationid = r.job
	 WHERE r.job = $urgent});
cmp_ok($urgent_wait, '<', 15,
	"watermark: the priority -1 job started $urgent_wait s after its enqueue");
cmp_ok($after_it, '>', 0,
	"watermark: before the rest of the backlog ($after_it backlog jobs started after it)"
);

# (b) the postponed jobs: not before they were due, soon after
for my $late ([ 'late0', $late0 ], [ 'late1', $late1 ])
{
	my ($tag, $id) = @$late;
	my $delay = $node->safe_psql(
		'postgres', qq{
		SELECT extract(epoch FROM r.started - c.postponeuntil)::numeric(10, 3)
		  FROM runs r JOIN asyncjobs.asyncoperation c ON c.asyncoperationid = r.job
		 WHERE r.job = $id});
	cmp_ok($delay, '>=', 0, "watermark: $tag did not start before it was due");
	cmp_ok($delay, '<', 15, "watermark: $tag started $delay s after it was due");
}

# (c) the chain: one at a time, in id order
my @chain = split / /, $chain;
is(scalar @chain, 3, "watermark: a chain of 3 jobs ($chain)");
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(job::text, ' ' ORDER BY started) FROM runs WHERE tag = 'chain'}),
	$chain,
	'watermark: the chain ran in id order');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FROM runs x JOIN runs y
		    ON x.tag = 'chain' AND y.tag = 'chain' AND x.job < y.job
		 WHERE x.started < y.ended AND y.started < x.ended}),
	'0',
	'watermark: one at a time');
note(   'watermark: the chain took '
	  . $node->safe_psql('postgres',
		q{SELECT extract(epoch FROM max(ended) - min(started))::numeric(10, 3)
		    FROM runs WHERE tag = 'chain'})
	  . ' s');

$log = $node->log_since($pos);
my $elapsed = time - $t_backlog;
is(mode_lines($log, 'leaves'), 0,
	'watermark: the workers stayed in watermark mode meanwhile');
@claims = claim_lines($log);
cmp_ok(scalar(grep { $_->[0] eq 'watermarks' } @claims),
	'>', 0, 'watermark: and claimed from the watermarks');
my $full = grep { $_->[0] eq 'start' } @claims;
cmp_ok($full, '<=', int($elapsed) + 3,
	sprintf('watermark: %d claims from the start in %.1f s: one a second for the pool',
		$full, $elapsed));
cmp_ok(scalar(grep { $_->[0] eq 'told' } @claims),
	'>', 0, 'watermark: and claims from the start as told (the enqueue, the chain)');

# every job exactly once
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT asyncoperationid) || ' '
		       || count(*) FILTER (WHERE statuscode = 30)
		  FROM asyncjobs.job_history}),
	'28006 28006 28006',
	'every job has one history row, Succeeded');
is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.job'),
	'0', 'no job is left in the active table');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) || ' ' || count(DISTINCT job) FROM runs}),
	'3006 3006',
	'every job of rec ran once');
is( $node->safe_psql(
		'postgres',
		"SELECT backend_xmin FROM pg_stat_activity WHERE pid = $holder_pid"),
	$xmin,
	'the horizon was held back the whole time');

###########################################################################
# release: the workers leave watermark mode, claims are cheap again
###########################################################################

$pos = $node->log_position;
$holder->query_safe('COMMIT');
$holder->quit;

# idle workers claim from the start every poll_interval; every worker
# that entered watermark mode since the hold began (the other one may
# have entered after the drain above) leaves it
my $entered_all = mode_lines($node->log_since($pos_hold), 'enters');
my $deadline = time + 30;
my $left = 0;
while (time < $deadline)
{
	$left = mode_lines($node->log_since($pos), 'leaves');
	last if $left >= $entered_all;
	usleep(200_000);
}
is($left, $entered_all,
	"release: the $entered_all worker(s) in watermark mode left it");
if ($node->log_since($pos) =~ /(asyncjobs worker \d+ leaves claim watermark mode: .*)/)
{
	note("release: $1");
}

$pos = $node->log_position;
enqueue_fill(1000);
ok( $node->poll_until(
		'postgres',
		q{SELECT count(*) FROM asyncjobs.job_history WHERE messagename = 'fill'},
		'26000', 60),
	'release: 1,000 more jobs drained');
ok($node->wait_for_idle_workers('postgres', 2, 30), 'release: workers idle');
$log = $node->log_since($pos);
@claims = claim_lines($log);
cmp_ok(scalar @claims, '>', 0, 'release: claims were made');
cmp_ok(scalar(grep { $_->[0] eq 'watermarks' } @claims),
	'>', 0, 'release: claims start from the watermarks');
my $max = 0;
$max = $_->[1] > $max ? $_->[1] : $max for @claims;
cmp_ok($max, '<=', $limit,
	"release: no claim read more than $limit entries of gone jobs (most: $max)");
is(mode_lines($log, 'enters'), 0, 'release: no worker enters watermark mode');

$node->stop;
done_testing();
