# Copyright (c) 2026, the asyncjobs authors
#
# Fused batches (asyncjobs.fused_batches, on by default): while its jobs
# run short, a worker claims the next ones by locking their rows only, and
# runs them and commits their outcomes in that same transaction.  Checked
# here:
#  - the jobs of fused batches are never marked InProgress (a job sees its
#    own row waiting), and end Succeeded with their start, host and one
#    attempt;
#  - with the setting off, or while an operation with max_concurrency is
#    registered, claims mark the jobs InProgress as before;
#  - a job of a fused batch that runs longer than asyncjobs.batch_max_age is
#    stopped, undone, and run again on its own (not counted as a retry);
#  - a cancel of a job in a fused batch waits for the batch, then finds the
#    job done;
#  - a kill -9 or a pg_terminate_backend() of the worker in the middle of a
#    fused batch undoes it; the jobs run again, their effects exist exactly
#    once, and their loss is counted (from the worker's claims file).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node(
	'fused',
	max_workers         => 1,
	restart_after_crash => 1);

# probe: records the statuscode its job's row has as it runs, then sleeps
# (on its first attempt only) and, if asked, counts its runs in a sequence
# (a sequence is not rolled back with the job)
$node->safe_psql('postgres', q{
	CREATE TABLE seen (n int PRIMARY KEY, job bigint, status smallint);
	CREATE SEQUENCE long_runs;
	CREATE FUNCTION probe(d jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		j asyncjobs.job%ROWTYPE;
	BEGIN
		IF d ? 'count' THEN
			PERFORM nextval(d->>'count');
		END IF;
		SELECT * INTO j FROM asyncjobs.job WHERE asyncoperationid = asyncjobs.current_job();
		INSERT INTO seen VALUES ((d->>'n')::int, j.asyncoperationid, j.statuscode);
		IF j.retrycount = 0 THEN
			PERFORM pg_sleep(coalesce((d->>'sleep')::float8, 0));
		END IF;
	END $$;
	SELECT asyncjobs.register_operation('probe', 'probe(jsonb)');
});

sub set_and_reload
{
	my ($setting) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET $setting; SELECT pg_reload_conf()");
}

sub pause_pool
{
	set_and_reload('asyncjobs.enabled = off');
	$node->poll_until('postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE state IN ('claiming', 'running')",
		'0', 30);
	sleep 1;
}

sub resume_pool { set_and_reload('asyncjobs.enabled = on'); }

# short jobs n = $from .. $to, in one transaction; returns when they are done
sub short_jobs
{
	my ($from, $to) = @_;
	$node->safe_psql('postgres',
		"SELECT count(asyncjobs.enqueue('probe', jsonb_build_object('n', g))) FROM generate_series($from, $to) g"
	);
	return $node->wait_for_jobs('postgres', "messagename = 'probe'", 60);
}

# how the jobs n = $from .. $to saw their rows: "<waiting> <inprogress>"
sub seen_as
{
	my ($from, $to) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE status = 0) || ' ' || count(*) FILTER (WHERE status = 20) "
		  . "FROM seen WHERE n BETWEEN $from AND $to");
}

ok($node->wait_for_workers('postgres', 1, 30), 'the worker runs');

# --- fused batches ------------------------------------------------------------
# the worker's claims grow with short jobs; from the second one on they are
# fused
ok(short_jobs(1, 40), 'warm-up: 40 short jobs ran');
pause_pool();
$node->safe_psql('postgres',
	"SELECT count(asyncjobs.enqueue('probe', jsonb_build_object('n', g))) FROM generate_series(1001, 1200) g"
);
resume_pool();
ok($node->wait_for_jobs('postgres', "messagename = 'probe'", 60), '200 short jobs ran');
my ($waiting) = split / /, seen_as(1001, 1200);
ok($waiting >= 150,
	"jobs of fused batches saw their row waiting, not InProgress ($waiting of 200)");
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FILTER (WHERE statuscode = 30), count(*) FILTER (WHERE hostid IS NOT NULL),
		       count(*) FILTER (WHERE startedon <= completedon), count(*) FILTER (WHERE retrycount = 0),
		       count(*) FILTER (WHERE jsonb_array_length(attempts) = 1)
		  FROM asyncjobs.job_history h JOIN seen s ON s.job = h.asyncoperationid
		 WHERE s.n BETWEEN 1001 AND 1200}),
	'200|200|200|200|200',
	'each ended Succeeded, with its host, its start and one attempt');

# --- when claims mark the jobs InProgress ---------------------------------------
set_and_reload('asyncjobs.fused_batches = off');
ok(short_jobs(2001, 2030), 'asyncjobs.fused_batches off: 30 short jobs ran');
is(seen_as(2001, 2030), '0 30', 'each saw its row InProgress');
set_and_reload('asyncjobs.fused_batches = on');

$node->safe_psql('postgres',
	"SELECT asyncjobs.register_operation('capped', 'probe(jsonb)', max_concurrency => 2)");
ok(short_jobs(3001, 3030), 'with a capped operation registered: 30 short jobs ran');
is(seen_as(3001, 3030), '0 30', 'each saw its row InProgress');
$node->safe_psql('postgres', "SELECT asyncjobs.pause_operation('capped')");
ok(short_jobs(3101, 3130), 'with the capped operation paused: 30 short jobs ran');
($waiting) = split / /, seen_as(3101, 3130);
ok($waiting >= 20, "most ran in fused batches again ($waiting of 30)");

# --- a job that runs too long for a fused batch -------------------------------------
# asyncjobs.batch_max_age is 50 ms: the job is stopped there, undone, and
# runs again on its own, to the end
pause_pool();
my $long = $node->safe_psql('postgres', q{
	SELECT asyncjobs.enqueue('probe', '{"n": 4001, "sleep": 1, "count": "long_runs"}')});
$node->safe_psql('postgres',
	"SELECT count(asyncjobs.enqueue('probe', jsonb_build_object('n', g))) FROM generate_series(4002, 4004) g"
);
resume_pool();
is($node->wait_for_job('postgres', $long, 60), 30, 'the long job Succeeded');
ok($node->wait_for_jobs('postgres', "messagename = 'probe'", 60), 'the short ones too');
is($node->safe_psql('postgres', 'SELECT last_value FROM long_runs'),
	'2', 'the long job started twice: stopped in its fused batch, then on its own');
is($node->safe_psql('postgres', 'SELECT status FROM seen WHERE n = 4001'),
	'20', 'only the run on its own left its effect, and it saw its row InProgress');
my $j = $node->job('postgres', $long);
is($j->{retrycount}, 0, 'the stopped run is not counted as a retry');
is(scalar @{ $j->{attempts} }, 1, 'nor recorded as an attempt');

# --- failures in a fused batch ---------------------------------------------------
# a transient failure is retried, a permanent one ends Failed, as in any
# batch: their outcomes are written at once, to rows that are not InProgress
$node->safe_psql('postgres', q{
	CREATE FUNCTION flaky(d jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF d ? 'transient' AND (SELECT retrycount FROM asyncjobs.job
		                         WHERE asyncoperationid = asyncjobs.current_job()) = 0 THEN
			RAISE EXCEPTION 'try again' USING ERRCODE = '40001';
		END IF;
		IF d ? 'permanent' THEN
			RAISE EXCEPTION 'not this one' USING ERRCODE = '22023';
		END IF;
	END $$;
	SELECT asyncjobs.register_operation('flaky', 'flaky(jsonb)',
		retry_delay => '10 ms', retry_delay_max => '10 ms');
});
ok(short_jobs(8001, 8040), 'short jobs ran');
pause_pool();
my ($transient, $permanent, $after) = $node->enqueue_together('postgres',
	[ 'flaky', '{"n": 8101, "transient": true}' ],
	[ 'flaky', '{"n": 8102, "permanent": true}' ],
	[ 'probe', '{"n": 8103}' ]);
resume_pool();
is($node->wait_for_job('postgres', $transient, 60), 30, 'the transient failure was retried, then Succeeded');
$j = $node->job('postgres', $transient);
is($j->{retrycount}, 1, 'once');
is($j->{attempts}[0]{outcome}, 'retry', 'its first attempt is recorded as a retry');
is($node->wait_for_job('postgres', $permanent, 60), 31, 'the permanent failure ended Failed');
$j = $node->job('postgres', $permanent);
is($j->{errorcode}, '22023', 'with its SQLSTATE');
ok(defined $j->{hostid}, 'and the host of its worker');
is($node->wait_for_job('postgres', $after, 60), 30, 'the next job of the batch Succeeded');
is($node->safe_psql('postgres', 'SELECT status FROM seen WHERE n = 8103'),
	'0', 'in a fused batch');

# --- a job that cancels another job of its fused batch ------------------------------
# (a job that supersedes an older one, say): the batch cannot commit the
# older job's outcome; it is rolled back, and its jobs run again claimed
# InProgress, as in a batch that is not fused (where a cancel from within
# the batch is rolled back with it, and comes after the older job ended)
$node->safe_psql('postgres', q{
	CREATE FUNCTION supersede(d jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM asyncjobs.cancel((d->>'cancel')::bigint);
		INSERT INTO seen VALUES ((d->>'n')::int, asyncjobs.current_job(), NULL);
	END $$;
	SELECT asyncjobs.register_operation('supersede', 'supersede(jsonb)');
});
ok(short_jobs(9001, 9040), 'short jobs ran');
pause_pool();
my ($older, $newer) = split /\|/, $node->safe_psql('postgres', q{
	WITH x AS (SELECT asyncjobs.enqueue('probe', '{"n": 9101}') AS id)
	SELECT x.id, asyncjobs.enqueue('supersede', jsonb_build_object('n', 9102, 'cancel', x.id))
	  FROM x});
my $off = $node->log_position;
resume_pool();
my $older_status = $node->wait_for_job('postgres', $older, 60);
is($node->wait_for_job('postgres', $newer, 60), 30, 'the newer job Succeeded');
ok($older_status == 30 || $older_status == 32,
	"the older one ended, Succeeded or Canceled ($older_status)");
is($node->safe_psql('postgres', 'SELECT string_agg(n::text, \',\' ORDER BY n) FROM seen WHERE n IN (9101, 9102)'),
	$older_status == 30 ? '9101,9102' : '9102',
	'each left its effect once, the older one only if it Succeeded');
ok($node->log_contains(qr/rolled back a fused batch of \d+ jobs/, $off),
	'the fused batch was rolled back');

# --- a cancel of a job in a fused batch ------------------------------------------
# with batch_max_age 5 s, a job of a fused batch may run 5 s
set_and_reload("asyncjobs.batch_max_age = '5s'");
ok(short_jobs(5001, 5020), 'short jobs ran');
pause_pool();
my ($first, $second) = $node->enqueue_together('postgres',
	[ 'probe', '{"n": 5101, "sleep": 2}' ],
	[ 'probe', '{"n": 5102}' ]);
resume_pool();
ok($node->wait_for_job_sleeping('postgres', $first, 30, 'fused'), 'the first job runs');
is($node->job('postgres', $first)->{statuscode},
	0, 'it looks waiting (a job of a fused batch is not marked InProgress)');
is($node->safe_psql('postgres', "SELECT asyncjobs.cancel($first)"),
	'f', 'cancel() waited for the batch, then found the job done');
is($node->wait_for_job('postgres', $first, 30), 30, 'the job Succeeded');
is($node->wait_for_job('postgres', $second, 30), 30, 'so did the next one of its batch');
is($node->safe_psql('postgres', 'SELECT count(*) FROM seen WHERE n IN (5101, 5102)'),
	'2', 'each left its effect once');

# --- the worker killed in the middle of a fused batch -----------------------------
sub run_and_stop_worker
{
	my ($signal, $n) = @_;
	# short jobs first: the worker's claims grow, and the next one takes the
	# two jobs below together
	ok(short_jobs($n - 50, $n - 10), "$signal: short jobs ran");
	pause_pool();
	my @jobs = $node->enqueue_together('postgres',
		[ 'probe', qq({"n": $n}) ],
		[ 'probe', sprintf('{"n": %d, "sleep": 3}', $n + 1) ]);
	resume_pool();
	ok($node->wait_for_job_sleeping('postgres', $jobs[1], 30, 'fused'),
		"$signal: the second job of the batch runs");
	is($node->job('postgres', $jobs[1])->{statuscode}, 0, "$signal: in a fused batch");
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $jobs[1]");
	my $off = $node->log_position;
	if ($signal eq 'KILL')
	{
		ok($node->crash_worker($pid, 60),
			"KILL: kill -9 worker $pid; the server reinitializes and accepts connections again");
	}
	else
	{
		is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"),
			't', "TERM: pg_terminate_backend() of worker $pid");
	}
	for my $i (0, 1)
	{
		is($node->wait_for_job('postgres', $jobs[$i], 60),
			30, "$signal: job " . ($i + 1) . ' ran again and Succeeded');
		is($node->job('postgres', $jobs[$i])->{retrycount},
			1, "$signal: job " . ($i + 1) . "'s loss is counted");
	}
	is( $node->safe_psql(
			'postgres', "SELECT count(*) FROM seen WHERE n IN ($n, @{[$n + 1]})"),
		'2', "$signal: each left its effect exactly once");
	ok($node->log_contains(qr/asyncjobs worker requeued 2 jobs whose claim a crash undid/, $off),
		"$signal: the next worker counted the loss from the claims file");
}

run_and_stop_worker('KILL', 6001);
run_and_stop_worker('TERM', 7001);

$node->stop;
done_testing();
