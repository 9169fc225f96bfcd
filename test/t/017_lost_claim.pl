# Copyright (c) 2026, the asyncjobs authors
#
# A worker commits its claim without waiting for the WAL flush (the batch
# that runs the jobs waits for it).  A crash of the server before anything
# flushed the WAL undoes the claim: the job is back to Ready with its
# retrycount unchanged, as if it never ran.  Its loss must count all the
# same (else a job that crashes the server would run forever): the worker
# wrote the claim's jobs to its file in pg_asyncjobs/ before the claim
# committed, and the workers of the next life count the loss from it
# (src/inflight.c).
#
# The WAL writer is stopped (SIGSTOP) while the job runs, so that no one
# writes the claim's commit record before the kill -9; then the claim is
# surely undone by the crash restart.  A second crash, with the claim's
# WAL flushed, checks that the loss is counted once, not twice.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = AsyncJobsNode->new_node(
	'lostclaim',
	max_workers         => 1,
	restart_after_crash => 1,
	extra_conf          => "autovacuum = off\nwal_writer_delay = '10s'\n"
	  . "checkpoint_timeout = '1h'");

$node->safe_psql('postgres',
	'CREATE TABLE effects (k text PRIMARY KEY, ran_at timestamptz)');

# a job whose first attempt inserts row $k and sleeps; later attempts do
# not sleep (AsyncJobsNode::enqueue_sleeping_job)
sub sleeping_job { return $node->enqueue_sleeping_job('postgres', $_[0], 120); }
sub wait_sleeping { return $node->wait_for_job_sleeping('postgres', $_[0], 30); }

sub crash
{
	my ($pid, $what) = @_;
	my $off = $node->crash_worker($pid, 60);
	ok($off, "$what: kill -9 worker $pid; the server reinitializes and accepts connections again");
	return $off;
}

# the pool is up and its worker has written its (empty) claims file
ok($node->wait_for_workers('postgres', 1, 30), 'the worker runs');
my $datadir = $node->data_dir;
my @files = glob("$datadir/pg_asyncjobs/claims.*");
is(scalar @files, 1, 'the worker has a claims file');

###########################################################################
# 1. the claim is undone by the crash: its loss is counted from the file
###########################################################################

my $walwriter = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'");
like($walwriter, qr/^\d+$/, "the WAL writer is pid $walwriter");
ok(kill('STOP', $walwriter), 'stop the WAL writer');

my $job = sleeping_job('undone');
ok(wait_sleeping($job), 'the job runs and sleeps after its INSERT');
my $j = $node->job('postgres', $job);
is($j->{statuscode}, 20, 'the claim is visible: the job is InProgress');
is($j->{retrycount}, 0,  'it has made no retry');
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $job");

# the claim's jobs are in the worker's file: job id at offset 24
@files = glob("$datadir/pg_asyncjobs/claims.*");
my $raw = slurp_file($files[0]);
my ($count, $first) = (unpack('V V V V q< q<', $raw))[1, 5];
is($count, 1,    'the claims file lists one job');
is($first, $job, 'and it is the running job');

my $off = crash($pid, 'undone');
# the stopped WAL writer never wrote the claim; the postmaster SIGKILLs it
# after 5 s, or it dies of the pending SIGQUIT once continued
kill('CONT', $walwriter);

ok( eval {
		$node->wait_for_log(
			qr/asyncjobs worker requeued 1 jobs whose claim a crash undid/, $off);
		1;
	},
	'the new worker counted the loss of the undone claim from the file');
is($node->wait_for_job('postgres', $job, 60), 30,
	'the job ran again and succeeded');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'undone'"),
	'1', 'its effect is there exactly once');
$j = $node->job('postgres', $job);
is($j->{retrycount}, 1, 'retrycount counts the lost attempt');
is(scalar @{ $j->{attempts} }, 2, 'two attempts are recorded');
is($j->{attempts}[0]{outcome}, 'worker_lost', 'the first one as worker_lost');
ok($j->{executiontimespan} < 60,
	'the second attempt did not sleep (it saw its retrycount)');
ok(!-e $files[0], 'the dead worker\'s claims file is removed');

###########################################################################
# 2. the claim survives the crash: the loss is counted once, not twice
###########################################################################

my $job2 = sleeping_job('kept');
ok(wait_sleeping($job2), 'the second job runs and sleeps');
$pid = $node->safe_psql('postgres',
	"SELECT pid FROM asyncjobs.workers WHERE asyncoperationid = $job2");
# a committed write flushes the WAL, the claim's commit record with it
$node->safe_psql('postgres', 'CREATE TABLE flush_wal ()');
$off = crash($pid, 'kept');
ok($node->wait_for_workers('postgres', 1, 30), 'kept: the pool is back');
is($node->wait_for_job('postgres', $job2, 60), 30,
	'kept: the job ran again and succeeded');
ok(!$node->log_contains(qr/claim a crash undid/, $off),
	'kept: no claim was undone');
is($node->safe_psql('postgres', "SELECT count(*) FROM effects WHERE k = 'kept'"),
	'1', 'kept: the effect is there exactly once');
$j = $node->job('postgres', $job2);
is($j->{retrycount}, 1, 'kept: the loss is counted once');
is(scalar @{ $j->{attempts} }, 2, 'kept: two attempts are recorded');

###########################################################################
# 3. files that are not claims of this database's dead workers
###########################################################################

# a file of a database that no longer exists, and a damaged file of a dead
# worker of this database: the next worker to start removes both, and
# leaves the live worker's file alone
my $dboid = $node->safe_psql('postgres',
	"SELECT oid FROM pg_database WHERE datname = 'postgres'");
my $gone = "$datadir/pg_asyncjobs/claims.4000000000.1";
my $damaged = "$datadir/pg_asyncjobs/claims.$dboid.2";
foreach my $f ($gone, $damaged)
{
	open(my $fh, '>', $f) or die "could not write $f: $!";
	print $fh 'not a claims file';
	close($fh);
	chown((getpwnam('postgres'))[2, 3], $f) if $> == 0;
}
my $live = $node->safe_psql('postgres', 'SELECT worker_id FROM asyncjobs.workers');
$pid = $node->safe_psql('postgres', 'SELECT pid FROM asyncjobs.workers');
$off = $node->log_position;
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"),
	't', 'terminate the worker: the launcher starts another');
ok( eval {
		$node->wait_for_log(qr/ignores file "pg_asyncjobs\/claims\.$dboid\.2"/,
			$off);
		1;
	},
	'the new worker ignored the damaged file');
ok($node->wait_for_workers('postgres', 1, 30), 'the pool is back');
ok(!-e $gone,    'the file of a dropped database is removed');
ok(!-e $damaged, 'the damaged file is removed');
my $newlive = $node->safe_psql('postgres', 'SELECT worker_id FROM asyncjobs.workers');
ok(-e "$datadir/pg_asyncjobs/claims.$dboid.$newlive",
	'the new worker has its own claims file');
ok(!-e "$datadir/pg_asyncjobs/claims.$dboid.$live",
	'the terminated worker removed its own file as it exited');

# a clean stop removes the claims files of the workers
$node->stop;
@files = glob("$datadir/pg_asyncjobs/claims.*");
is(scalar @files, 0, 'no claims file is left after a clean stop');

done_testing();
