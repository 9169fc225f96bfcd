# Copyright (c) 2026, the asyncjobs authors
#
# Job control (DESIGN sections 3 and 5): cancel and pause of a running job
# interrupt its worker, roll the job's writes back and end it Canceled (32)
# or Paused (1/12) at once; a resumed job runs again from the start and
# its effect is there exactly once; cancel and pause of a waiting job are
# immediate; retry runs a Failed (or Canceled) job again under the same id
# with a fresh retry budget; pause_operation stops new starts of one
# operation; asyncjobs.enabled = off stops every pick-up, and nothing is
# lost or run twice when it is turned on again.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $bound_s = 5;    # generous: a working interrupt takes milliseconds

my $node = AsyncJobsNode->new_node('cancel_pause', max_workers => 2);

$node->safe_psql(
	'postgres', q{
	CREATE TABLE effects (tag text NOT NULL, job bigint,
	                      at timestamptz NOT NULL DEFAULT clock_timestamp());
	CREATE TABLE flags (name text PRIMARY KEY);

	-- fails transiently (AJ001) until the flag "flaky_ok" exists
	CREATE FUNCTION flaky(data jsonb) RETURNS text
	LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO effects (tag, job) VALUES ('flaky', asyncjobs.current_job());
		IF NOT EXISTS (SELECT 1 FROM flags WHERE name = 'flaky_ok') THEN
			RAISE EXCEPTION 'not yet' USING ERRCODE = 'AJ001';
		END IF;
		RETURN 'ok';
	END
	$$;
	SELECT asyncjobs.register_operation('flaky', 'flaky(jsonb)',
		max_retries => 2, retry_delay => '50 ms', retry_delay_max => '100 ms');

	-- records its run, sleeping data->'sleep' seconds first
	CREATE FUNCTION record(data jsonb) RETURNS void
	LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep(coalesce((data->>'sleep')::float8, 0));
		INSERT INTO effects (tag, job) VALUES (data->>'tag', asyncjobs.current_job());
	END
	$$;
	SELECT asyncjobs.register_operation('record', 'record(jsonb)');

	-- The highest number of jobs matching "cond" (on asyncjobs.asyncoperation)
	-- seen at once over "secs" seconds, sampled every 20 ms from inside the
	-- server (each statement of a volatile function sees what has committed).
	CREATE FUNCTION max_seen(cond text, secs float8) RETURNS bigint
	LANGUAGE plpgsql AS $$
	DECLARE
		mx   bigint := 0;
		n    bigint;
		stop timestamptz := clock_timestamp() + make_interval(secs => secs);
	BEGIN
		LOOP
			EXECUTE 'SELECT count(*) FROM asyncjobs.asyncoperation WHERE ' || cond
			   INTO n;
			mx := greatest(mx, n);
			EXIT WHEN clock_timestamp() > stop;
			PERFORM pg_sleep(0.02);
		END LOOP;
		RETURN mx;
	END
	$$;
});

# Waits until the job runs and sleeps in pg_sleep (its INSERT done).
sub wait_sleeping { return $node->wait_for_job_sleeping('postgres', $_[0]); }

sub effects_of
{
	my ($job) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM effects WHERE job = $job");
}

sub status_of
{
	my ($job) = @_;
	return $node->safe_psql('postgres',
		"SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation "
		  . "WHERE asyncoperationid = $job");
}

###########################################################################
# cancel of a running job
###########################################################################

my $job = $node->safe_psql(
	'postgres', q{
	SELECT asyncjobs.enqueue_sql($$
		INSERT INTO effects (tag, job) VALUES ('cancel', asyncjobs.current_job());
		SELECT pg_sleep(30);
	$$)});
ok(wait_sleeping($job), 'cancel: the long job runs and sleeps after its INSERT');
is(status_of($job), '2/20', 'cancel: the job is Locked / InProgress');

my $t0 = time;
my $out = $node->safe_psql('postgres',
	"SELECT asyncjobs.cancel($job); SELECT asyncjobs.wait($job, '20 s');");
my $elapsed = time - $t0;
is($out, "t\n32", 'cancel() returned true and the job ended Canceled (32)');
cmp_ok($elapsed, '<', $bound_s,
	sprintf('cancel: the job ended %.3f s after cancel() (< %d s)', $elapsed, $bound_s));
is(status_of($job), '3/32', 'cancel: the job is Completed / Canceled');
is(effects_of($job), '0', "cancel: the job's INSERT was rolled back");
is($node->safe_psql('postgres', "SELECT asyncjobs.cancel($job)"),
	'f', 'a second cancel() of the canceled job returns false');
is($node->safe_psql('postgres', "SELECT asyncjobs.pause($job)"),
	'f', 'pause() of the canceled job returns false');
my $j = $node->job('postgres', $job);
ok(defined $j->{completedon}, 'cancel: completedon is set');
cmp_ok($j->{executiontimespan} // 0, '<', 25,
	'cancel: the job did not sleep its 30 s');
note('cancel: attempts ' . join(', ', map { $_->{outcome} } @{ $j->{attempts} }));

# the worker that was interrupted runs the next job normally
my $next = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('record', '{"tag": "after-cancel"}')});
is($node->wait_for_job('postgres', $next), 30,
	'a job after the cancel runs and succeeds');
is(effects_of($next), '1', 'and its effect is there once');

###########################################################################
# pause of a running job, then resume: runs again from the start, once
###########################################################################

$job = $node->safe_psql(
	'postgres', q{
	SELECT asyncjobs.enqueue_sql($$
		INSERT INTO effects (tag, job) VALUES ('pause', asyncjobs.current_job());
		SELECT pg_sleep(CASE WHEN EXISTS (SELECT 1 FROM flags WHERE name = 'pause_fast')
		                     THEN 0 ELSE 30 END);
	$$)});
ok(wait_sleeping($job), 'pause: the long job runs and sleeps after its INSERT');

$t0 = time;
is($node->safe_psql('postgres', "SELECT asyncjobs.pause($job)"),
	't', 'pause() of the running job returns true');
ok( $node->poll_until(
		'postgres',
		"SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation "
		  . "WHERE asyncoperationid = $job",
		'1/12', 10),
	'pause: the job ends Suspended / Paused (1/12)');
$elapsed = time - $t0;
cmp_ok($elapsed, '<', $bound_s,
	sprintf('pause: Paused %.3f s after pause() (< %d s)', $elapsed, $bound_s));
is(effects_of($job), '0', "pause: the job's INSERT was rolled back");
is($node->safe_psql('postgres', "SELECT asyncjobs.pause($job)"),
	'f', 'a second pause() of the paused job returns false');

# a paused job stays paused: no worker takes it
is( $node->safe_psql('postgres',
		"SELECT max_seen('asyncoperationid = $job AND statuscode <> 12', 1.0)"),
	'0',
	'pause: the paused job stays Paused for a second (no worker takes it)');
is(effects_of($job), '0', 'pause: and nothing of it ran meanwhile');

# the second run must not sleep
$node->safe_psql('postgres', "INSERT INTO flags VALUES ('pause_fast')");
is( $node->safe_psql('postgres',
		"SELECT asyncjobs.resume($job); SELECT asyncjobs.wait($job, '20 s');"),
	"t\n30",
	'resume() returns true and the job runs again and Succeeds');
is(effects_of($job), '1', 'resume: the effect of the job is there exactly once');
$j = $node->job('postgres', $job);
is($j->{retrycount}, 0, 'resume: a pause is not a retry (retrycount 0)');
is(scalar @{ $j->{attempts} }, 2,
	'resume: two attempts recorded (the interrupted one and the second run)');
is($j->{attempts}[-1]{outcome}, 'succeeded', 'resume: the last attempt succeeded');
is($node->safe_psql('postgres', "SELECT asyncjobs.resume($job)"),
	'f', 'resume() of a completed job returns false');

###########################################################################
# cancel and pause of waiting (postponed) jobs are immediate
###########################################################################

my $pc = $node->safe_psql(
	'postgres', q{
	SELECT asyncjobs.enqueue('record', '{"tag": "postponed-cancel"}',
	                         postpone_until => now() + interval '1 hour')});
is(status_of($pc), '1/10', 'a postponed job is Suspended / Waiting');
is( $node->safe_psql(
		'postgres', qq{
		SELECT asyncjobs.cancel($pc);
		SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation
		 WHERE asyncoperationid = $pc;}),
	"t\n3/32",
	'cancel() of a postponed job returns true and it is Canceled at once');
is($node->safe_psql('postgres', "SELECT asyncjobs.cancel($pc)"),
	'f', 'a second cancel() of it returns false');

my $pp = $node->safe_psql(
	'postgres', q{
	SELECT asyncjobs.enqueue('record', '{"tag": "postponed-pause"}',
	                         postpone_until => now() + interval '1 hour')});
is( $node->safe_psql(
		'postgres', qq{
		SELECT asyncjobs.pause($pp);
		SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation
		 WHERE asyncoperationid = $pp;}),
	"t\n1/12",
	'pause() of a postponed job returns true and it is Paused at once');
is( $node->safe_psql(
		'postgres', qq{
		SELECT asyncjobs.resume($pp);
		SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation
		 WHERE asyncoperationid = $pp;}),
	"t\n1/10",
	'resume() of it returns true and it waits for its time again (1/10)');
is($node->safe_psql('postgres', "SELECT asyncjobs.postpone($pp, now())"),
	't', 'postpone() to now makes it due');
is($node->wait_for_job('postgres', $pp), 30, 'and it runs and succeeds');
is(effects_of($pp), '1', 'its effect is there once');

###########################################################################
# retry of a Failed job: same id, retrycount back to 0, runs again
###########################################################################

my $fl = $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue('flaky')});
is($node->wait_for_job('postgres', $fl, 10), 31,
	'retry: the flaky job ends Failed after its retries');
$j = $node->job('postgres', $fl);
is($j->{retrycount}, 2, 'retry: it failed with retrycount 2 (budget spent)');
is($j->{errorcode}, 'AJ001', 'retry: with its last error');
is(effects_of($fl), '0', 'retry: no failed attempt left an effect');

$node->safe_psql('postgres', "INSERT INTO flags VALUES ('flaky_ok')");
is($node->safe_psql('postgres', "SELECT asyncjobs.retry($fl)"),
	$fl, 'retry() returns the same id');
is($node->wait_for_job('postgres', $fl, 10), 30,
	'retry: the job runs again and succeeds');
$j = $node->job('postgres', $fl);
is($j->{retrycount}, 0, 'retry: retrycount was reset to 0');
is($j->{maxretries}, 2, 'retry: maxretries is unchanged');
is_deeply($j->{result}, 'ok', 'retry: the result of the new run is stored');
is(scalar @{ $j->{attempts} }, 4,
	'retry: the three failed attempts are kept, plus the new one');
is(effects_of($fl), '1', 'retry: the effect is there exactly once');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM asyncjobs.asyncoperation WHERE asyncoperationid = $fl"),
	'1',
	'retry: the job exists once (not both active and in history)');
my ($ret, $stdout, $stderr) =
  $node->psql('postgres', "SELECT asyncjobs.retry($fl)");
isnt($ret, 0, 'retry() of a Succeeded job is an error');
like($stderr, qr/succeeded and cannot be retried/, 'with a clear message');

# a Canceled job can be retried too (the postponed one canceled above)
is($node->safe_psql('postgres', "SELECT asyncjobs.retry($pc)"),
	$pc, 'retry() of a Canceled job returns its id');
is($node->wait_for_job('postgres', $pc), 30, 'the canceled job runs and succeeds');
is(effects_of($pc), '1', 'its effect is there once');

###########################################################################
# pause_operation / resume_operation
###########################################################################

# a job of the operation that already runs finishes
my $running = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue('record', '{"tag": "op-running", "sleep": 1}')});
ok( $node->poll_until(
		'postgres',
		"SELECT statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $running",
		'20', 10),
	'pause_operation: a job of the operation runs');
$node->safe_psql('postgres', q{SELECT asyncjobs.pause_operation('record')});
my $opjobs = $node->safe_psql(
	'postgres', q{
	SELECT string_agg(asyncjobs.enqueue('record', '{"tag": "op-paused"}')::text, ',')
	  FROM generate_series(1, 5)});
my @opjobs = split /,/, $opjobs;
is(scalar @opjobs, 5, 'pause_operation: five jobs enqueued while it is paused');
# another operation is not affected
my $other = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue_sql('INSERT INTO effects (tag) VALUES (''op-other'')')});
is($node->wait_for_job('postgres', $other), 30,
	'pause_operation: a job of another operation still runs');
is($node->wait_for_job('postgres', $running), 30,
	'pause_operation: the job that was running finishes (Succeeded)');
is( $node->safe_psql(
		'postgres', q{
		SELECT max_seen($$messagename = 'record' AND data->>'tag' = 'op-paused'
		                  AND statecode <> 0$$, 3.0)}),
	'0',
	'pause_operation: none of the five starts in 3 s');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE tag = 'op-paused'"),
	'0', 'pause_operation: nothing of them ran');

$node->safe_psql('postgres', q{SELECT asyncjobs.resume_operation('record')});
ok( $node->wait_for_jobs(
		'postgres', "messagename = 'record' AND data->>'tag' = 'op-paused'", 10),
	'resume_operation: the five jobs complete');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FILTER (WHERE statuscode = 30)
		  FROM asyncjobs.asyncoperation
		 WHERE messagename = 'record' AND data->>'tag' = 'op-paused'}),
	'5',
	'resume_operation: all five Succeeded');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || '/' || count(DISTINCT job) FROM effects WHERE tag = 'op-paused'"),
	'5/5',
	'resume_operation: each ran exactly once');

###########################################################################
# asyncjobs.enabled = off: nothing is picked up; on: all run exactly once
###########################################################################

$node->safe_psql('postgres',
	'ALTER SYSTEM SET asyncjobs.enabled = off; SELECT pg_reload_conf();');
ok($node->poll_until('postgres', 'SHOW asyncjobs.enabled', 'off', 10),
	'enabled: the server has asyncjobs.enabled = off');
# the workers process the reload when their latch is set by the SIGHUP;
# give them time to do so
usleep(1_000_000);
$node->safe_psql(
	'postgres', q{
	SELECT asyncjobs.enqueue_sql('INSERT INTO effects (tag, job) VALUES (''disabled'', asyncjobs.current_job())',
	                             jsonb_build_object('tag', 'disabled'))
	  FROM generate_series(1, 10);
	SELECT asyncjobs.enqueue('record', '{"tag": "disabled"}')
	  FROM generate_series(1, 5);
});
is( $node->safe_psql(
		'postgres',
		q{SELECT max_seen($$data->>'tag' = 'disabled' AND statecode <> 0$$, 3.0)}),
	'0',
	'enabled = off: none of the 15 jobs starts in 3 s');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE tag = 'disabled'"),
	'0', 'enabled = off: nothing ran');

$node->safe_psql('postgres',
	'ALTER SYSTEM RESET asyncjobs.enabled; SELECT pg_reload_conf();');
ok($node->wait_for_jobs('postgres', "data->>'tag' = 'disabled'", 15),
	'enabled = on again: the 15 jobs complete');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FILTER (WHERE statuscode = 30) || '/' || count(*)
		    FROM asyncjobs.asyncoperation WHERE data->>'tag' = 'disabled'}),
	'15/15',
	'enabled = on again: all 15 Succeeded');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) || '/' || count(DISTINCT job) FROM effects WHERE tag = 'disabled'"),
	'15/15',
	'enabled = on again: each ran exactly once');
is( $node->safe_psql(
		'postgres',
		q{SELECT max(retrycount) FROM asyncjobs.asyncoperation WHERE data->>'tag' = 'disabled'}),
	'0',
	'enabled = on again: no job needed a retry');

$node->stop;
done_testing();
