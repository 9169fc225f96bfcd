# Copyright (c) 2026, the asyncjobs authors
#
# Bulk delete jobs (operationtype 13) run by the background workers:
# - a large bulk delete killed mid-way (kill -9, restart_after_crash): the
#   committed batches stay, the job resumes (retrycount 1) and deletes
#   exactly the matching rows, counted exactly once;
# - pause and cancel take effect between batches (a batch in flight is
#   rolled back); resume continues with the rows left;
# - the daily window (in the server's time zone, here Asia/Kolkata): out of
#   it the job waits (1/10) until the window's next start, in it it deletes;
# - rows that cannot be deleted (restricting foreign key) are recorded in
#   asyncjobs.bulkdeletefailure and the job Succeeds;
# - a role without DELETE is refused; a recurring bulk delete runs again.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $tz = 'Asia/Kolkata';    # +05:30, no DST: not UTC, not whole hours

my $node = AsyncJobsNode->new_node(
	'bulk_delete',
	max_workers         => 2,
	restart_after_crash => 1,
	log_min_messages    => 'log',
	extra_conf          => "timezone = '$tz'");

# Each batch is one DELETE statement; a statement trigger sleeps in each
# one while the table's knob says so, so batches take a while.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE knobs (tab text PRIMARY KEY, delay float8 NOT NULL);
	CREATE FUNCTION slow_batch() RETURNS trigger
	LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_sleep(coalesce((SELECT delay FROM knobs WHERE tab = TG_TABLE_NAME), 0));
		RETURN NULL;
	END
	$$;
});

sub make_table
{
	my ($name, $rows, $delay) = @_;
	$node->safe_psql(
		'postgres', qq{
		CREATE TABLE $name (id int PRIMARY KEY, grp int NOT NULL, pad text);
		INSERT INTO $name SELECT i, i % 3, 'row ' || i FROM generate_series(1, $rows) i;
		CREATE TRIGGER slow BEFORE DELETE ON $name
		   FOR EACH STATEMENT EXECUTE FUNCTION slow_batch();
		INSERT INTO knobs VALUES ('$name', $delay);
		ANALYZE $name;});
}

sub q1
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

sub progress
{
	my ($job) = @_;
	return q1("SELECT successcount || '/' || failurecount || '/' || batches "
		  . "FROM asyncjobs.bulkdeleteoperation WHERE bulkdeleteoperationid = $job");
}

sub status_of
{
	my ($job) = @_;
	return q1("SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation "
		  . "WHERE asyncoperationid = $job");
}

###########################################################################
# kill -9 mid-way: resumes, exactly the matching rows, counted once
###########################################################################

make_table('big', 300_000, 0.1);
# 100,000 rows match, in 50 batches of 2000 (0.1 s each while slow)
my $job = q1(q{SELECT asyncjobs.bulk_delete('big', 'grp = 0', batch_size => 2000)});
like($job, qr/^\d+$/, 'crash: bulk delete queued');

ok($node->poll_until('postgres',
		"SELECT batches >= 3 FROM asyncjobs.bulkdeleteoperation WHERE bulkdeleteoperationid = $job",
		't', 20),
	'crash: the job has committed at least 3 batches');
my $pid = q1("SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $job");
like($pid, qr/^\d+$/, "crash: worker $pid runs the job");
my ($done_before) = split /\n/,
  q1("SELECT successcount || ' ' || batches FROM asyncjobs.bulkdeleteoperation "
	  . "WHERE bulkdeleteoperationid = $job");
my ($succ_before, $batches_before) = split / /, $done_before;
is($succ_before, 2000 * $batches_before,
	"crash: progress is consistent before the kill ($succ_before rows in $batches_before batches)");
cmp_ok($batches_before, '<', 50, 'crash: not all batches are done before the kill');

my $log_offset = $node->log_position;
ok(kill('KILL', $pid), "crash: kill -9 worker $pid");
ok( eval {
		$node->wait_for_log(qr/\(PID $pid\) was terminated by signal 9/, $log_offset);
		$node->wait_for_log(qr/all server processes terminated; reinitializing/,
			$log_offset);
		1;
	},
	'crash: the postmaster saw the worker die and reinitializes');
ok($node->wait_for_server(30), 'crash: the server accepts connections again');
# the rest of the job may go fast
q1(q{UPDATE knobs SET delay = 0 WHERE tab = 'big'});

my ($rows_matching_after_crash) =
  q1('SELECT count(*) FROM big WHERE grp = 0');
cmp_ok($rows_matching_after_crash, '<=', 100_000 - $succ_before,
	'crash: the batches committed before the kill stayed deleted');

is($node->wait_for_job('postgres', $job, 30), 30, 'crash: the job resumed and Succeeded');
is(q1('SELECT count(*) FROM big WHERE grp = 0'), '0',
	'crash: no matching row is left');
is(q1('SELECT count(*) FROM big WHERE grp <> 0'), '200000',
	'crash: every non-matching row is still there');
is(progress($job), '100000/0/51',
	'crash: successcount is exactly 100000 (no batch counted twice), 50 batches + the last empty one');
my $j = $node->job('postgres', $job);
is($j->{retrycount}, 1, 'crash: retrycount counts the lost attempt');
is($j->{attempts}[0]{outcome}, 'worker_lost', 'crash: the first attempt was lost with its worker');
is_deeply($j->{result}, { deleted => 100000, failed => 0 },
	'crash: the result is {"deleted": 100000, "failed": 0}');
is(q1("SELECT count(*) FROM asyncjobs.bulkdeletefailure WHERE asyncoperationid = $job"),
	'0', 'crash: no failure recorded');
ok($node->wait_for_workers('postgres', 2, 15), 'crash: the worker pool is back');

###########################################################################
# the window, in the server's time zone
###########################################################################

q1(q{CREATE TABLE win (id int PRIMARY KEY, grp int NOT NULL);
     INSERT INTO win SELECT i, i % 2 FROM generate_series(1, 100) i;});
is(q1('SHOW timezone'), $tz, "window: the server's time zone is $tz");
# the window opens in 2 hours and closes in 3 (local time of the server)
$job = q1(
	qq{SET TIME ZONE '$tz';
	   SELECT asyncjobs.bulk_delete('win', 'grp = 0', batch_size => 10,
	          window_start => (now() + interval '2 hours')::time,
	          window_end => (now() + interval '3 hours')::time)});
ok($node->poll_until('postgres',
		"SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $job",
		'1/10', 10),
	'window: out of its window the job goes back to Suspended / Waiting (1/10)');
is( q1(
		qq{SET TIME ZONE '$tz';
		   SELECT a.postponeuntil = CASE WHEN current_date + ws > localtimestamp
		                                 THEN current_date + ws
		                                 ELSE current_date + 1 + ws END
		     FROM asyncjobs.asyncoperation a,
		          LATERAL (SELECT (a.data->>'window_start')::time AS ws) w
		    WHERE a.asyncoperationid = $job}),
	't',
	"window: postponeuntil is the window's next start in $tz");
is(q1("SELECT count(*) FROM win"), '100', 'window: nothing was deleted');
is(progress($job), '0/0/0', 'window: no batch ran');
is( q1("SELECT nextrun = postponeuntil FROM asyncjobs.bulkdeleteoperation b "
		  . "JOIN asyncjobs.asyncoperation a USING (asyncoperationid) WHERE asyncoperationid = $job"),
	't', 'window: bulkdeleteoperation.nextrun shows the next start');
$j = $node->job('postgres', $job);
is($j->{retrycount}, 0, 'window: waiting for the window is not a retry');
usleep(1_000_000);
is(status_of($job), '1/10', 'window: it keeps waiting (1 s later)');
is(q1("SELECT count(*) FROM win"), '100', 'window: still nothing deleted');
is(q1("SELECT asyncjobs.cancel($job)"), 't', 'window: the waiting job can be canceled');

# a window around now deletes
$job = q1(
	qq{SET TIME ZONE '$tz';
	   SELECT asyncjobs.bulk_delete('win', 'grp = 0', batch_size => 10,
	          window_start => (now() - interval '1 hour')::time,
	          window_end => (now() + interval '1 hour')::time)});
is($node->wait_for_job('postgres', $job, 15), 30, 'window: a window around now: the job Succeeds');
is(q1("SELECT count(*) FROM win WHERE grp = 0"), '0', 'window: and deleted the matching rows');
is(q1("SELECT count(*) FROM win"), '50', 'window: only those');
is(progress($job), '50/0/6', 'window: 50 rows in 5 batches + the last empty one');

# a window that is open now in UTC but not in the server's time zone
# (the worker must use the server's zone): UTC now +/- 20 minutes
$job = q1(
	q{SET TIME ZONE 'UTC';
	  SELECT asyncjobs.bulk_delete('win', 'true',
	         window_start => (now() - interval '20 minutes')::time,
	         window_end => (now() + interval '20 minutes')::time)});
ok($node->poll_until('postgres',
		"SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $job",
		'1/10', 10),
	"window: a window open in UTC but not in $tz makes the job wait");
is(q1("SELECT count(*) FROM win"), '50', 'window: nothing deleted by it');
q1("SELECT asyncjobs.cancel($job)");

###########################################################################
# rows that cannot be deleted: a restricting foreign key
###########################################################################

q1(q{CREATE TABLE parent (id int PRIMARY KEY);
     INSERT INTO parent SELECT generate_series(1, 10000);
     CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL
                         REFERENCES parent ON DELETE RESTRICT);
     INSERT INTO child SELECT i, i * 263 FROM generate_series(1, 37) i;});
$job = q1(q{SELECT asyncjobs.bulk_delete('parent', 'id > 100', batch_size => 500)});
is($node->wait_for_job('postgres', $job, 30), 30, 'failures: the job Succeeds');
is(progress($job), '9863/37/21',
	'failures: 9863 deleted, 37 failed (referenced), in 20 batches + the last empty one');
is( q1("SELECT string_agg(regardingobjectid, ',' ORDER BY regardingobjectid::int) = "
		  . "(SELECT string_agg(parent_id::text, ',' ORDER BY parent_id) FROM child) "
		  . "FROM asyncjobs.bulkdeletefailure WHERE asyncoperationid = $job"),
	't', 'failures: one bulkdeletefailure row per referenced parent, by its key');
is(q1("SELECT string_agg(DISTINCT errornumber, ',') FROM asyncjobs.bulkdeletefailure "
		  . "WHERE asyncoperationid = $job"),
	'23503', 'failures: all with errornumber 23503 (foreign key violation)');
is(q1("SELECT bool_and(errordescription LIKE '%foreign key%') FROM asyncjobs.bulkdeletefailure "
		  . "WHERE asyncoperationid = $job"),
	't', 'failures: with the error message');
is(q1('SELECT count(*) FROM parent'), 100 + 37, 'failures: the referenced rows and the non-matching ones stay');
$j = $node->job('postgres', $job);
is_deeply($j->{result}, { deleted => 9863, failed => 37 }, 'failures: the result counts both');

###########################################################################
# a role without DELETE is refused
###########################################################################

q1(q{CREATE ROLE mallory LOGIN; GRANT SELECT ON parent TO mallory;});
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT asyncjobs.bulk_delete('parent', 'true')},
	extra_params => [ '-U', 'mallory' ]);
isnt($ret, 0, 'non-owner: a role without DELETE cannot queue a bulk delete');
like($err, qr/permission denied for table (public\.)?parent/, 'non-owner: permission denied');
is(q1("SELECT count(*) FROM asyncjobs.asyncoperation WHERE operationtype = 13 AND ownerid = 'mallory'::regrole"),
	'0', 'non-owner: no job was queued');

###########################################################################
# recurrence: the next occurrence deletes the rows that match by then
###########################################################################

q1(q{CREATE TABLE sessions (id int PRIMARY KEY, expired bool NOT NULL);
     INSERT INTO sessions SELECT i, i % 2 = 0 FROM generate_series(1, 20) i;});
my $first = q1(
	q{SELECT asyncjobs.bulk_delete('sessions', 'expired', name => 'expire sessions',
	         recurrence => 'FREQ=MINUTELY', start_at => now() - interval '58 seconds')});
is($node->wait_for_job('postgres', $first, 10), 30, 'recurrence: the first occurrence runs now');
is(progress($first), '10/0/2', 'recurrence: it deleted the 10 expired rows');
is(q1(q{SELECT isrecurring FROM asyncjobs.bulkdeleteoperation WHERE bulkdeleteoperationid = } . $first),
	't', 'recurrence: isrecurring');
q1(q{INSERT INTO sessions SELECT i, true FROM generate_series(101, 107) i});
my $second;
ok($node->poll_until('postgres',
		"SELECT count(*) FROM asyncjobs.asyncoperation WHERE operationtype = 13 "
		  . "AND name = 'expire sessions' AND asyncoperationid > $first AND statuscode = 30",
		'1', 15),
	'recurrence: the next occurrence (a new job) ran and Succeeded');
$second = q1("SELECT asyncoperationid FROM asyncjobs.asyncoperation WHERE operationtype = 13 "
	  . "AND name = 'expire sessions' AND asyncoperationid > $first AND statuscode = 30");
is(progress($second), '7/0/2', 'recurrence: it deleted the 7 rows inserted since');
is(q1('SELECT count(*) FROM sessions WHERE expired'), '0', 'recurrence: no expired row left');
is(q1('SELECT count(*) FROM sessions'), '10', 'recurrence: the others stay');
is( q1("SELECT (a2.startedon - a1.startedon) BETWEEN interval '1 second' AND interval '10 seconds' "
		  . "FROM asyncjobs.asyncoperation a1, asyncjobs.asyncoperation a2 "
		  . "WHERE a1.asyncoperationid = $first AND a2.asyncoperationid = $second"),
	't', 'recurrence: the second ran about 2 s after the first');
# end the series
q1("SELECT asyncjobs.cancel(asyncoperationid) FROM asyncjobs.job "
	  . "WHERE operationtype = 13 AND name = 'expire sessions'");


###########################################################################
# (last: with the bug below, each of these leaves a worker stuck)
# pause between batches, then resume
###########################################################################

make_table('pz', 90_000, 0.1);    # 30,000 rows match: 30 batches of 1000
$job = q1(q{SELECT asyncjobs.bulk_delete('pz', 'grp = 0', batch_size => 1000)});
ok($node->poll_until('postgres',
		"SELECT batches >= 2 FROM asyncjobs.bulkdeleteoperation WHERE bulkdeleteoperationid = $job",
		't', 20),
	'pause: the job has committed 2 batches');
my $t0 = time;
is(q1("SELECT asyncjobs.pause($job)"), 't', 'pause: pause() returns true');
my $elapsed;
{
	ok($node->poll_until('postgres',
			"SELECT statecode || '/' || statuscode FROM asyncjobs.asyncoperation WHERE asyncoperationid = $job",
			'1/12', 5),
		'pause: the job is Paused (1/12)');
	$elapsed = time - $t0;
	cmp_ok($elapsed, '<', 3, sprintf('pause: Paused %.3f s after pause()', $elapsed));
}
# (with the bug, the worker stops between batches anyway: let it settle)
usleep(300_000);
my ($succ_paused, $fail_paused, $batches_paused) = split m{/}, progress($job);
cmp_ok($succ_paused, '>', 0, "pause: some rows were deleted before the pause ($succ_paused)");
cmp_ok($succ_paused, '<', 30000, 'pause: not all of them');
is($succ_paused, 1000 * $batches_paused, 'pause: progress counts whole batches');
is(q1('SELECT count(*) FROM pz WHERE grp = 0'), 30000 - $succ_paused,
	'pause: exactly the rows of the committed batches are gone');
usleep(1_000_000);
is(progress($job), "$succ_paused/0/$batches_paused", 'pause: nothing more is deleted while Paused (1 s)');
is(q1('SELECT count(*) FROM pz WHERE grp = 0'), 30000 - $succ_paused,
	'pause: the rows left are still there');

q1(q{UPDATE knobs SET delay = 0.01 WHERE tab = 'pz'});
{
	is(status_of($job), '1/12', 'pause: still Paused');
	is(q1("SELECT asyncjobs.resume($job)"), 't', 'resume: resume() returns true');
	is($node->wait_for_job('postgres', $job, 5), 30, 'resume: the job continues and Succeeds');
	is(q1('SELECT count(*) FROM pz WHERE grp = 0'), '0', 'resume: no matching row is left');
	is(progress($job), '30000/0/31', 'resume: successcount exactly 30000, 30 batches + the last empty one');
	$j = $node->job('postgres', $job);
	is_deeply($j->{result}, { deleted => 30000, failed => 0 }, 'resume: result counts every row once');
}
is(q1('SELECT count(*) FROM pz WHERE grp <> 0'), '60000', 'resume: non-matching rows untouched');
$j = $node->job('postgres', $job);
is($j->{retrycount}, 0, 'resume: a pause is not a retry');

###########################################################################
# cancel between batches
###########################################################################

make_table('cz', 90_000, 0.1);
$job = q1(q{SELECT asyncjobs.bulk_delete('cz', 'grp = 0', batch_size => 1000)});
ok($node->poll_until('postgres',
		"SELECT batches >= 2 FROM asyncjobs.bulkdeleteoperation WHERE bulkdeleteoperationid = $job",
		't', 20),
	'cancel: the job has committed 2 batches');
$t0 = time;
{
	is(q1("SELECT asyncjobs.cancel($job); SELECT asyncjobs.wait($job, '5 s')"),
		"t\n32", 'cancel: cancel() returns true and the job ends Canceled');
	$elapsed = time - $t0;
	cmp_ok($elapsed, '<', 3, sprintf('cancel: Canceled %.3f s after cancel()', $elapsed));
}
my ($succ_cancel, undef, $batches_cancel) = split m{/}, progress($job);
cmp_ok($succ_cancel, '>', 0, "cancel: rows of committed batches were deleted ($succ_cancel)");
is($succ_cancel, 1000 * $batches_cancel, 'cancel: progress counts whole batches');
is(q1('SELECT count(*) FROM cz WHERE grp = 0'), 30000 - $succ_cancel,
	'cancel: the committed batches stay deleted, the rest stay');
is(q1('SELECT count(*) FROM cz WHERE grp <> 0'), '60000', 'cancel: non-matching rows untouched');
usleep(500_000);
is(q1('SELECT count(*) FROM cz WHERE grp = 0'), 30000 - $succ_cancel,
	'cancel: nothing is deleted after the cancel');
{
	is(status_of($job), '3/32', 'cancel: the job stays Canceled');
}

$node->stop;
done_testing();
