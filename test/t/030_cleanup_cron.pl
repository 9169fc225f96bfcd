# Copyright (c) 2026, the asyncjobs authors
#
# schedule_cleanup(): pg_cron really runs asyncjobs.cleanup() on schedule,
# scheduling again replaces the job, and without pg_cron it is a clear
# error.  Also: a cleanup that cannot lock a partition skips it with a
# NOTICE instead of waiting.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node(
	'cron',
	max_workers => 1,
	extra_conf  => join("\n",
		"shared_preload_libraries = 'asyncjobs,pg_cron'",
		"cron.database_name = 'postgres'",
		"cron.use_background_workers = on"));

$node->safe_psql('postgres', 'CREATE EXTENSION pg_cron');

# old completed jobs in a partition of their own, 70 days back, and one
# 40 days back that only a Failed job keeps
$node->safe_psql(
	'postgres', q{
	CREATE FUNCTION old_rows(days_ago int, status int, n int) RETURNS void
	LANGUAGE plpgsql AS $$
	DECLARE
		d date := (now() AT TIME ZONE 'UTC')::date - days_ago;
		part text := 'job_history_' || to_char(d, 'YYYYMMDD');
		ts timestamptz := (d + time '12:00') AT TIME ZONE 'UTC';
	BEGIN
		IF to_regclass('asyncjobs.' || part) IS NULL THEN
			EXECUTE format('CREATE TABLE asyncjobs.%I PARTITION OF asyncjobs.job_history
							FOR VALUES FROM (%L) TO (%L)', part,
						   d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
		END IF;
		INSERT INTO asyncjobs.job_history
			(asyncoperationid, name, operationtype, messagename, statecode, statuscode,
			 ownerid, createdon, modifiedon, completedon, retrycount, maxretries, data,
			 priority, depth, correlationid, correlationupdatedtime, attempts)
		SELECT nextval('asyncjobs.asyncoperation_id_seq'), 'old', 54, 'old', 3, status,
			   current_user::regrole, ts, ts, ts, 0, 0, '{}', 0, 1, gen_random_uuid(), ts, '[]'
		  FROM generate_series(1, n);
	END $$;
	SELECT old_rows(70, 30, 100), old_rows(70, 31, 10), old_rows(40, 30, 5), old_rows(40, 31, 1);
});
is($node->safe_psql('postgres', "SELECT count(*) FROM asyncjobs.job_history WHERE name = 'old'"),
	'116', 'old completed jobs are in history');

# a job that is not completed, however old, stays
my $active = $node->safe_psql('postgres',
	q{SELECT asyncjobs.enqueue_sql('SELECT 1', postpone_until => now() + interval '1 year')});
$node->safe_psql('postgres',
	"UPDATE asyncjobs.job SET createdon = now() - interval '1 year' WHERE asyncoperationid = $active");

# -- a cleanup that cannot lock a partition skips it ----------------------
{
	my $holder = $node->background_psql('postgres');
	$holder->query_safe(
		"BEGIN; LOCK TABLE asyncjobs.job_history_"
		  . $node->safe_psql('postgres',
			q{SELECT to_char((now() AT TIME ZONE 'UTC')::date - 70, 'YYYYMMDD')})
		  . " IN ACCESS EXCLUSIVE MODE");
	my ($stdout, $stderr);
	my $t0 = time;
	$node->psql('postgres', 'SELECT asyncjobs.cleanup()',
		stdout => \$stdout, stderr => \$stderr);
	ok(time - $t0 < 10, 'cleanup does not wait for a locked partition');
	is($stdout, '5', 'it purged what it could: the Succeeded jobs of day -40');
	like($stderr, qr/skipped 1 table\(s\) it could not lock/, 'and says what it skipped');
	$holder->query_safe('ROLLBACK');

	# a long reader of history: the partitions can be counted, but the
	# parent, which DROP TABLE locks ACCESS EXCLUSIVE, cannot be had
	$holder->query_safe('BEGIN; SELECT count(*) FROM asyncjobs.asyncoperation');
	$t0 = time;
	$node->psql('postgres', 'SELECT asyncjobs.cleanup()',
		stdout => \$stdout, stderr => \$stderr);
	ok(time - $t0 < 10, 'cleanup does not wait for a reader of history');
	is($stdout, '0', 'it dropped nothing');
	like($stderr, qr/skipped 1 table\(s\) it could not lock/, 'and says so');
	$holder->query_safe('ROLLBACK');
	$holder->quit;
}

# -- pg_cron runs the scheduled cleanup ------------------------------------
my $jobid = $node->safe_psql('postgres', q{SELECT asyncjobs.schedule_cleanup('* * * * *')});
like($jobid, qr/^\d+$/, 'schedule_cleanup returns a pg_cron job id');
is( $node->safe_psql(
		'postgres',
		"SELECT jobname, schedule, command, database, username FROM cron.job WHERE jobid = $jobid"),
	'asyncjobs-cleanup-postgres|* * * * *|SELECT asyncjobs.cleanup()|postgres|postgres',
	'the pg_cron job runs asyncjobs.cleanup() in this database as the caller');

ok( $node->poll_until(
		'postgres',
		"SELECT count(*) > 0 FROM cron.job_run_details WHERE jobid = $jobid AND status = 'succeeded'",
		't', 130),
	'pg_cron ran the cleanup and it succeeded');
is($node->safe_psql('postgres', "SELECT count(*) FROM asyncjobs.job_history WHERE name = 'old'"),
	'1', 'the old jobs are gone but the Failed job of day -40 (kept 60 days)');
is( $node->safe_psql(
		'postgres',
		q{SELECT return_message FROM cron.job_run_details WHERE status = 'succeeded' ORDER BY runid LIMIT 1}),
	'SELECT 1', 'pg_cron recorded the run');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		   WHERE i.inhparent = 'asyncjobs.job_history'::regclass
		     AND c.relname = 'job_history_' || to_char((now() AT TIME ZONE 'UTC')::date - 70, 'YYYYMMDD')}),
	'0', 'the 70-day-old partition was dropped');
is($node->safe_psql('postgres', "SELECT statuscode FROM asyncjobs.job WHERE asyncoperationid = $active"),
	'10', 'the old active job is untouched');

# -- scheduling again replaces the job -------------------------------------
is($node->safe_psql('postgres', q{SELECT asyncjobs.schedule_cleanup('30 2 * * *')}),
	$jobid, 'scheduling again returns the same job');
is($node->safe_psql('postgres', 'SELECT count(*), min(schedule) FROM cron.job'),
	'1|30 2 * * *', 'one pg_cron job, with the new schedule');
is($node->safe_psql('postgres', q{SELECT asyncjobs.schedule_cleanup()}),
	$jobid, 'the default schedule replaces it too');
is($node->safe_psql('postgres', 'SELECT schedule FROM cron.job'),
	'0 3 * * *', 'default schedule: every day at 03:00');

# pg_cron's own validation of the schedule
my ($ret, $stdout, $stderr) =
  $node->psql('postgres', q{SELECT asyncjobs.schedule_cleanup('not a schedule')});
isnt($ret, 0, 'a bad cron schedule is refused');
like($stderr, qr/invalid schedule/, 'by pg_cron');

# a role without the extension owner's privileges may not schedule it
$node->safe_psql('postgres', 'CREATE ROLE cron_user LOGIN');
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT asyncjobs.schedule_cleanup()}, extra_params => [ '-U', 'cron_user' ]);
like($stderr, qr/permission denied for asyncjobs\.schedule_cleanup/,
	'a role without privileges may not schedule the cleanup');

# in another database: pg_cron lives in cron.database_name only
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION asyncjobs');
($ret, $stdout, $stderr) = $node->psql('other',
	q{\set VERBOSITY verbose
	  SELECT asyncjobs.schedule_cleanup()});
like($stderr, qr/55000: pg_cron is not installed in database "other"/,
	'another database: SQLSTATE 55000');
like($stderr,
	qr/HINT:  pg_cron runs in database "postgres" \(cron.database_name\)\. There, run: SELECT cron\.schedule_in_database\('asyncjobs-cleanup-other'/,
	'with a hint saying how to schedule it from the pg_cron database');

# -- a server without pg_cron ------------------------------------------------
my $plain = AsyncJobsNode->new_node('nocron', max_workers => 1);
($ret, $stdout, $stderr) = $plain->psql('postgres',
	q{\set VERBOSITY verbose
	  SELECT asyncjobs.schedule_cleanup()});
isnt($ret, 0, 'without pg_cron, schedule_cleanup fails');
like($stderr, qr/ERROR:  55000: pg_cron is not installed in database "postgres"/,
	'with SQLSTATE 55000 and a clear message');
like($stderr, qr/HINT:  Install pg_cron: shared_preload_libraries = 'pg_cron'.*CREATE EXTENSION pg_cron/,
	'and a hint saying how to install pg_cron');
is($plain->safe_psql('postgres', 'SELECT asyncjobs.cleanup()'), '0',
	'cleanup() itself needs no pg_cron');

$plain->stop;
$node->stop;
done_testing();
