# Copyright (c) 2026, the asyncjobs authors
#
# Databases come and go while the server runs (DESIGN sections 1 and 4):
# - a database that creates the extension after the server started gets
#   its worker pool at once (asyncjobs.launcher_naptime is 60 s here, so
#   only CREATE EXTENSION telling the launcher can explain it), and its
#   jobs run;
# - DROP DATABASE of a database with workers succeeds without FORCE (the
#   ProcessUtility hook stops its workers first), and no worker is started
#   for the dropped database afterwards, even when the launcher wakes for
#   another reason;
# - the pool of the other database is untouched.

use strict;
use warnings;

# test/perl is found without prove -I (PGXS drops a PROVE_FLAGS set before
# it is included)
use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node(
	'newdb',
	max_workers      => 2,
	launcher_naptime => '60s');

$node->safe_psql('postgres', 'CREATE DATABASE d2');
is($node->worker_count('d2'), '0', 'd2 has no workers before the extension');

$node->safe_psql('d2', 'CREATE EXTENSION asyncjobs');
ok($node->wait_for_workers('d2', 2, 10),
	'd2 gets its two workers after CREATE EXTENSION');
is( $node->safe_psql(
		'postgres', q{
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type = 'asyncjobs worker' AND datname = 'd2'}),
	'2',
	'pg_stat_activity shows them connected to d2');
is($node->worker_count('d2', 'd2'), '2',
	'asyncjobs.workers in d2 shows them too');

$node->safe_psql('d2', 'CREATE TABLE effects (k text PRIMARY KEY, db text)');
my $job = $node->safe_psql('d2',
	q{SELECT asyncjobs.enqueue_sql('INSERT INTO effects VALUES (''d2'', current_database())')});
is($node->wait_for_job('d2', $job), 30, 'a job enqueued in d2 succeeds');
is($node->safe_psql('d2', 'SELECT db FROM effects'),
	'd2', 'it ran in d2');
like($node->job('d2', $job)->{hostid}, qr/\@d2$/, 'a d2 worker ran it');

# Drop the database while its workers sit connected.
my $postgres_pids = $node->safe_psql('postgres',
	"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM asyncjobs.workers WHERE database = 'postgres'"
);
my $log_offset = $node->log_position;
my ($ret, $stdout, $stderr) =
  $node->psql('postgres', 'DROP DATABASE d2', timeout => 30);
is($ret, 0, 'DROP DATABASE d2 succeeds while d2 has workers')
  or diag($stderr);
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'd2'"),
	'0', 'd2 is gone');
ok($node->wait_for_workers('d2', 0, 5), 'no worker of d2 is left');
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM asyncjobs.workers WHERE database = 'postgres'"
	),
	$postgres_pids,
	'the workers of postgres were left alone');

# Make the launcher wake up before its next database scan: a worker of
# postgres dies and is replaced.  The launcher must not start workers for
# the dropped database meanwhile.
my $victim = (split /,/, $postgres_pids)[0];
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($victim)"),
	't', "terminate worker $victim of postgres");
ok($node->poll_until(
		'postgres',
		"SELECT count(*) FROM asyncjobs.workers WHERE pid = $victim", '0', 10),
	'it is gone');
ok($node->wait_for_workers('postgres', 2, 10), 'postgres has two workers again');
sleep(2);    # let any stray start show up in the log
my $log = $node->log_since($log_offset);
{
	# the DROP DATABASE hook tells the launcher, which rereads pg_database
	unlike($log, qr/database \d+ does not exist/,
		'no worker tried to connect to the dropped database');
	unlike($log,
		qr/starting background worker process "asyncjobs worker for database "d2""/,
		'no worker was started for d2 after the drop');
}
is($node->worker_count('d2'), '0', 'd2 still has no workers');

my $pjob = $node->safe_psql('postgres', q{SELECT asyncjobs.enqueue_sql('SELECT 1')});
is($node->wait_for_job('postgres', $pjob), 30, 'jobs of postgres still run');

# A database recreated under the same name starts from nothing, and gets
# workers again once it creates the extension.
$node->safe_psql('postgres', 'CREATE DATABASE d2');
$node->safe_psql('d2', 'CREATE EXTENSION asyncjobs');
ok($node->wait_for_workers('d2', 2, 10), 'a new d2 gets its workers');

$node->stop;
done_testing();
