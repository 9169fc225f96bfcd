# Copyright (c) 2026, the asyncjobs authors
#
# Claims start after the workers' watermarks (src/worker.c, "Claim
# watermarks"; src/shmem.c, claim fronts): what puts a job before them
# tells the workers, so the job runs while the backlog behind it still
# waits.  asyncjobs.poll_interval is 60 s here, so the periodic claim from
# the start never rescues a job that nobody told the workers about: such a
# job would wait until the backlog of 10,000 jobs has drained, and longer.
# With 2 workers, a backlog of jobs of 1 ms, and while it drains:
# - a job of a higher priority than the backlog;
# - a job enqueued by a transaction that began before the backlog was
#   enqueued (its due time, now(), sorts before the backlog's);
# - a job enqueued with postpone_until in the past;
# - a job paused at the head of the backlog, resumed once the workers are
#   past it; a job postponed the same way and made due again; a job that
#   failed, retried with asyncjobs.retry();
# - a chain of 3 jobs sharing a dependency token, at the head of the
#   backlog: each is ready only once the one before is done;
# - a job of a fused batch that runs too long: it yields, and the batch's
#   jobs it had not reached wait again, before the others' watermarks;
# each runs with thousands of backlog jobs still waiting, every job once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = AsyncJobsNode->new_node(
	'watermarks',
	max_workers      => 2,
	poll_interval    => '60s',
	log_min_messages => 'debug2');

$node->safe_psql(
	'postgres', q{
	CREATE TABLE runs (job bigint NOT NULL, tag text NOT NULL,
	                   waiting bigint, at timestamptz NOT NULL);

	-- One operation for all, as watermarks are per operation.  The
	-- backlog's jobs (data {}) take 1 ms, or data->'sleep' seconds.  A
	-- probe (data->'tag') records how many backlog jobs still waited when
	-- it ran; it fails while fail_once has a row of its tag.
	CREATE TABLE fail_once (tag text PRIMARY KEY);
	CREATE FUNCTION job_run(data jsonb) RETURNS void
	LANGUAGE plpgsql AS $$
	BEGIN
		IF data->>'tag' IS NULL THEN
			PERFORM pg_sleep(coalesce((data->>'sleep')::float8, 0.001));
			INSERT INTO runs VALUES (asyncjobs.current_job(), 'fill', NULL,
			                         clock_timestamp());
			RETURN;
		END IF;
		IF EXISTS (SELECT 1 FROM fail_once WHERE tag = data->>'tag') THEN
			RAISE EXCEPTION 'probe % fails until fail_once lets it', data->>'tag';
		END IF;
		INSERT INTO runs VALUES (asyncjobs.current_job(), data->>'tag',
		    (SELECT count(*) FROM asyncjobs.job j WHERE j.data = '{}'),
		    clock_timestamp());
	END
	$$;
	SELECT asyncjobs.register_operation('wm', 'job_run(jsonb)', max_retries => 0);
});

my $backlog = 10_000;

sub pause_pool
{
	my ($on) = @_;
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET asyncjobs.enabled = " . ($on ? 'off' : 'on'));
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
}

# the backlog, queued with the pool paused, after what the test puts
# first; then the pool resumes
sub start_backlog
{
	my ($first_sql) = @_;
	pause_pool(1);
	# (a paused pool lets its current batch finish)
	sleep 1;
	my $out = $node->safe_psql(
		'postgres', qq{
		BEGIN;
		$first_sql;
		SELECT count(*) FROM asyncjobs.enqueue_many('wm',
		    ARRAY(SELECT '{}'::jsonb FROM generate_series(1, $backlog)));
		COMMIT;});
	pause_pool(0);
	return $out;
}

# waits until $n backlog jobs ran since the start of this backlog
sub wait_backlog_ran
{
	my ($n, $base) = @_;
	return $node->poll_until('postgres',
		"SELECT count(*) >= $base + $n FROM runs WHERE tag = 'fill'",
		't', 60);
}

# the probes tagged @tags ran, each while more than a quarter of the
# backlog still waited (a job missed by the claims would wait for all of it)
sub probes_ran_early
{
	my ($section, @tags) = @_;
	for my $tag (@tags)
	{
		ok( $node->poll_until('postgres',
				"SELECT count(*) FROM runs WHERE tag = '$tag'", '1', 30),
			"$section: probe $tag ran");
		my $waiting = $node->safe_psql('postgres',
			"SELECT coalesce(string_agg(waiting::text, ','), 'none') FROM runs WHERE tag = '$tag'"
		);
		cmp_ok($waiting, '>', $backlog / 4,
			"$section: probe $tag ran with $waiting backlog jobs still waiting");
	}
}

sub probe
{
	my ($tag, %opt) = @_;
	my $args = join('', map { ", $_ => $opt{$_}" } sort keys %opt);
	return "asyncjobs.enqueue('wm', '{\"tag\": \"$tag\"}'$args)";
}

###########################################################################
# enqueues that sort before the watermarks
###########################################################################

# the old transaction begins before the backlog is enqueued; it gets no
# transaction id (so holds back no horizon) until its enqueue
my $old = $node->background_psql('postgres', timeout => 300);
$old->query_safe('BEGIN');
$old->query_safe('SELECT 1');

my $ran0 = $node->safe_psql('postgres', q{SELECT count(*) FROM runs WHERE tag = 'fill'});
start_backlog('SELECT 1');
ok(wait_backlog_ran(1000, $ran0), 'enqueue: the backlog runs (1,000 jobs done)');

my $logpos = $node->log_position;
$node->safe_psql('postgres', 'SELECT ' . probe('urgent', priority => -1));
$old->query_safe('SELECT ' . probe('oldtx'));
$old->query_safe('COMMIT');
$old->quit;
$node->safe_psql('postgres',
	'SELECT ' . probe('pastdue', postpone_until => q{now() - interval '1 hour'}));

probes_ran_early('enqueue', qw(urgent oldtx pastdue));
like($node->log_since($logpos), qr/a claim of \d+ jobs from the start \(told\)/,
	'enqueue: a worker was told to claim from the start (DEBUG2)');
like($node->log_since($logpos), qr/a claim of \d+ jobs from the watermarks/,
	'enqueue: the other claims start from the watermarks');

ok($node->wait_for_jobs('postgres', q{messagename = 'wm'}, 120),
	'enqueue: the backlog drained');

###########################################################################
# resume, postpone, retry: jobs put back before the watermarks
###########################################################################

# At the head of the backlog, in its transaction: a probe paused, one
# postponed by a day, and one of priority -1 that fails (max_retries 0).
# Once the workers are past them: resume, postpone to an hour ago, retry
# (which queues it with now() as its due time: its priority puts it first).
$node->safe_psql('postgres', q{INSERT INTO fail_once VALUES ('retried')});
$ran0 = $node->safe_psql('postgres', q{SELECT count(*) FROM runs WHERE tag = 'fill'});
is( start_backlog(
		'SELECT asyncjobs.pause(' . probe('paused') . ')::text || '
		  . q{' ' || asyncjobs.postpone(} . probe('later')
		  . q{, now() + interval '1 day')::text || ' ' || (}
		  . probe('retried', priority => -1)
		  . ' > 0)::text'),
	"true true true\n$backlog",
	'control: probes paused, postponed by a day, failing, at the head of the backlog');
my %id;
for my $tag (qw(paused later retried))
{
	$id{$tag} = $node->safe_psql('postgres',
		"SELECT asyncoperationid FROM asyncjobs.asyncoperation WHERE data->>'tag' = '$tag'");
}
ok(wait_backlog_ran(1000, $ran0), 'control: the backlog runs past them');
ok( $node->poll_until(
		'postgres',
		"SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $id{retried}",
		'31', 30),
	'control: probe retried failed');
$node->safe_psql('postgres', q{DELETE FROM fail_once});

is( $node->safe_psql(
		'postgres',
		"SELECT asyncjobs.resume($id{paused})::text || ' ' || "
		  . "asyncjobs.postpone($id{later}, now() - interval '1 hour')::text || ' ' || "
		  . "(asyncjobs.retry($id{retried}) IS NOT NULL)::text"),
	'true true true',
	'control: resumed, postponed to an hour ago, retried');
probes_ran_early('control', qw(paused later retried));
ok($node->wait_for_jobs('postgres', q{messagename = 'wm'}, 120),
	'control: the backlog drained');

###########################################################################
# a dependency chain at the head of the backlog
###########################################################################

$ran0 = $node->safe_psql('postgres', q{SELECT count(*) FROM runs WHERE tag = 'fill'});
start_backlog(
	join(', ',
		'SELECT ' . probe('chain1', dependency_token => q{'wm-chain'}),
		probe('chain2', dependency_token => q{'wm-chain'}),
		probe('chain3', dependency_token => q{'wm-chain'})));
probes_ran_early('dependency', qw(chain1 chain2 chain3));
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(tag, ' ' ORDER BY at) FROM runs WHERE tag LIKE 'chain%'}),
	'chain1 chain2 chain3',
	'dependency: in order');
ok($node->wait_for_jobs('postgres', q{messagename = 'wm'}, 120),
	'dependency: the backlog drained');

###########################################################################
# a fused batch that stops early: the jobs it did not reach wait again
###########################################################################

# At the head of the backlog: a job of 0.3 s, longer than
# asyncjobs.batch_max_age (50 ms), then a probe.  The worker whose fused
# batch took them runs the slow job, which yields: the batch commits and
# its other jobs are free again, behind where the other worker's claims
# start (it skipped them, locked).  Nobody is told: the worker that
# released them moves its own watermark back and takes them next.
$logpos = $node->log_position;
$ran0 = $node->safe_psql('postgres', q{SELECT count(*) FROM runs WHERE tag = 'fill'});
start_backlog(q{SELECT asyncjobs.enqueue('wm', '{"sleep": 0.3}'), } . probe('behind'));
probes_ran_early('yield', 'behind');
like($node->log_since($logpos), qr/ran longer than \d+ ms in a fused batch: it runs again on its own/,
	'yield: the slow job yielded in its fused batch');
ok($node->wait_for_jobs('postgres', q{messagename = 'wm'}, 120),
	'yield: the backlog drained');

###########################################################################
# every job once
###########################################################################

is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(DISTINCT job) FROM runs}),
	$node->safe_psql(
		'postgres', q{
		SELECT count(*) || ' ' || count(*)
		  FROM asyncjobs.job_history WHERE statuscode = 30}),
	'every job that Succeeded ran once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM asyncjobs.job'),
	'0', 'no job is left in the active table');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM asyncjobs.job_history WHERE data->>'tag' IS NULL}),
	4 * $backlog + 1,
	'every backlog job completed');

$node->stop;
done_testing();
